"""Evaluation: COCO detection metrics through pycocotools."""
