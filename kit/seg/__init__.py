"""Semantic segmentation: segmenters, one paper's mechanism per module, and what they share.

- ``models`` — ``TinyFCN`` (TinyResNet C2-C5 + a top-down decoder to full-resolution logits),
  ``segmentation_loss`` (cross-entropy with ignore label 255), the chapter's baseline segmenter.
"""
