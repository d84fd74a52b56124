"""One segmenter for several datasets: CDCL's network (P33), and the naive joint-training baseline.

Cross-Dataset Collaborative Learning (Wang et al., arXiv 2103.11351) trains ONE network on D
datasets whose images look different and whose label spaces differ. Three pieces:

- **Dataset-Aware Blocks** (:mod:`kit.seg.dataset_bn`): every convolution is shared by all
  datasets, every BatchNorm is one branch per dataset (own running statistics mu_d, sigma_d and
  own affine gamma_d, beta_d);
- **one classifier head per dataset**: label spaces differ (a class merged in one dataset, a
  class only another one draws), so the network never takes one softmax over a union of labels;
  dataset d's logits come from head d and are scored against dataset d's labels only;
- **Dataset Alternation Training** (:mod:`kit.seg.alternation`): every iteration takes one batch of
  each dataset, each through its own BN branch and head, sums the D losses and makes ONE
  backward pass and one optimiser step (:func:`joint_loss`).

Here the trunk is the chapter's :class:`kit.seg.models.TinyFCN` (tiny ResNet + FPN-style top-down
decoder; the paper: PSPNet on ResNet-18), built once and reused, not copied: its 1x1 ``classifier``
is replaced by :class:`DatasetHeads` (one 1x1 conv per dataset, at the same place, stride 4, so
TinyFCN's own forward still upsamples the logits) and its BatchNorms are converted to
:class:`kit.seg.dataset_bn.DatasetBatchNorm2d`. ``dataset_bn=False`` keeps the plain shared BNs:
the *naive joint training* baseline of the catalog (same trunk, same heads, one set of statistics
for all datasets).

Choices (no official CDCL code exists; DSBN, ``woozch/DSBN``, is the closest official block):

- ``forward(images, dataset)`` takes the dataset explicitly, every time: an int, or a 1-d tensor of
  per-sample ids that must all be equal. DSBN routes a batch by ``domain_label[0]`` and would
  silently normalise a mixed batch with the first sample's statistics; here a mixed batch or an
  index outside ``0..D-1`` is a ValueError naming the datasets seen or allowed.
- :meth:`CrossDatasetSegmenter.branch` returns dataset d's path through the network as a plain
  :class:`TinyFCN` (the shared convolutions, BN branch d, head d): what a single-dataset model of
  the same size is, so the single-dataset baseline can start from exactly the weights CDCL starts
  from, and the tests can check that the multi-dataset forward on d *is* that network.
- ``bn_dataset`` (analysis only, not the paper): run dataset d's head with another dataset's BN
  branch, for the "wrong-BN" matrix of the study.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from kit.seg.dataset_bn import DatasetBatchNorm2d, convert_to_dataset_bn, dataset_of_batch, using_dataset
from kit.seg.models import TinyFCN, segmentation_loss

__all__ = ["DatasetHeads", "CrossDatasetSegmenter", "joint_loss", "parameter_accounting", "branch_statistics"]


def _check_label_counts(num_labels) -> list[int]:
    if not isinstance(num_labels, (list, tuple)) or not num_labels:
        raise ValueError(f"num_labels must be a non-empty list of label counts, one per dataset "
                         f"(SegSceneConfig.num_labels, background included), got {num_labels!r}")
    for d, count in enumerate(num_labels):
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"num_labels[{d}] must be an int (labels of dataset {d}, background included), "
                            f"got {type(count).__name__}")
        if count < 2:
            raise ValueError(f"num_labels[{d}] must be >= 2 (background and at least one class), got {count}")
    return list(num_labels)


class DatasetHeads(nn.Module):
    """One 1x1 classifier per dataset: (B, C, h, w) -> (B, num_labels[d], h, w) for the active d."""

    def __init__(self, in_channels: int, num_labels: Sequence[int]):
        super().__init__()
        self.num_labels = _check_label_counts(num_labels)
        self.heads = nn.ModuleList(nn.Conv2d(in_channels, count, 1) for count in self.num_labels)
        self.active_dataset: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active_dataset is None:
            raise RuntimeError("no dataset is active in DatasetHeads: call CrossDatasetSegmenter(images, dataset)")
        return self.heads[self.active_dataset](x)


class CrossDatasetSegmenter(nn.Module):
    """TinyFCN trunk shared by D datasets, dataset-aware BN (or shared BN), one head per dataset.

    num_labels: labels of each dataset, background included (``SegSceneConfig.num_labels``).
    dataset_bn: True = CDCL's dataset-aware BN; False = one shared BN (naive joint training).
    """

    def __init__(self, num_labels: Sequence[int], dataset_bn: bool = True, widths=(16, 32, 64, 128),
                 decoder_channels: int = 32, channels_last: bool = True):
        super().__init__()
        num_labels = _check_label_counts(num_labels)
        if not isinstance(dataset_bn, bool):
            raise TypeError(f"dataset_bn must be True (CDCL) or False (shared BN), got {dataset_bn!r}")
        self.num_datasets = len(num_labels)
        self.dataset_bn = dataset_bn
        # the chapter's TinyFCN, its classifier replaced by the per-dataset heads (created after the trunk)
        self.trunk = TinyFCN(num_labels[0] - 1, widths, decoder_channels, channels_last)
        self.trunk.classifier = DatasetHeads(decoder_channels, num_labels).to(memory_format=self.trunk.memory_format)
        if dataset_bn:
            convert_to_dataset_bn(self.trunk, self.num_datasets)

    @property
    def heads(self) -> DatasetHeads:
        return self.trunk.classifier

    @property
    def num_labels(self) -> list[int]:
        return self.heads.num_labels

    def forward(self, images: torch.Tensor, dataset, bn_dataset=None) -> torch.Tensor:
        """images (B, 3, H, W) of ONE dataset -> logits (B, num_labels[dataset], H, W).

        dataset: int or 1-d per-sample ids (all equal); picks the head and (by default) the BN branch.
        bn_dataset: analysis only, the BN branch to use instead (the "wrong-BN" experiment).
        """
        index = dataset_of_batch(dataset, self.num_datasets)
        bn_index = index if bn_dataset is None else dataset_of_batch(bn_dataset, self.num_datasets)
        if bn_dataset is not None and not self.dataset_bn:
            raise ValueError("bn_dataset needs dataset-aware BN (dataset_bn=True); this model shares one BN")
        self.heads.active_dataset = index
        try:
            if self.dataset_bn:
                with using_dataset(self.trunk, bn_index):
                    return self.trunk(images)  # TinyFCN.forward: trunk, head at stride 4, bilinear upsampling
            return self.trunk(images)
        finally:
            self.heads.active_dataset = None

    def loss(self, images: torch.Tensor, targets: torch.Tensor, dataset) -> torch.Tensor:
        """Cross-entropy (ignore 255) of one dataset's batch against that dataset's labels."""
        return segmentation_loss(self(images, dataset), targets)

    def predict(self, images: torch.Tensor, dataset, bn_dataset=None) -> torch.Tensor:
        """Label ids (B, H, W) of dataset ``dataset``'s label space, eval mode, no autograd."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self(images, dataset, bn_dataset).argmax(1)
        finally:
            self.train(was_training)

    def branch(self, dataset: int) -> TinyFCN:
        """Dataset ``dataset``'s path as a plain TinyFCN (a copy): shared convs, BN branch d, head d."""
        index = dataset_of_batch(dataset, self.num_datasets)
        plain = copy.deepcopy(self.trunk)
        plain.classifier = copy.deepcopy(self.heads.heads[index])
        plain.num_classes = self.num_labels[index] - 1

        def to_plain(module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, DatasetBatchNorm2d):
                    setattr(module, name, child.branches[index])
                else:
                    to_plain(child)

        to_plain(plain)
        return plain


def joint_loss(model: CrossDatasetSegmenter, batches: Sequence[tuple]) -> torch.Tensor:
    """DAT's L = sum_d L_d over one iteration's ``[(d, (images, targets)), ...]`` (one backward on it).

    The same for CDCL and for the shared-BN baseline; with dataset-aware BN it is
    :func:`kit.seg.alternation.dat_loss` with ``loss_of = model.loss``.
    """
    if not isinstance(model, CrossDatasetSegmenter):
        raise TypeError(f"model must be a CrossDatasetSegmenter, got {type(model).__name__}")
    if not batches:
        raise ValueError("batches must hold at least one (dataset_index, (images, targets)) pair")
    seen = [dataset_of_batch(d, model.num_datasets) for d, _ in batches]
    if len(set(seen)) != len(seen):
        raise ValueError(f"one batch per dataset in a DAT iteration, got datasets {seen}")
    return sum(model.loss(images, targets, d) for d, (images, targets) in batches)


def parameter_accounting(model: CrossDatasetSegmenter) -> dict:
    """Parameters by owner: ``shared`` (convs, decoder), ``bn_affine`` and ``head`` per dataset
    (lists of D), ``total``; with dataset BN, total = shared + sum_d (bn_affine[d] + head[d])."""
    if not isinstance(model, CrossDatasetSegmenter):
        raise TypeError(f"model must be a CrossDatasetSegmenter, got {type(model).__name__}")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    dataset_bns = [m for m in model.modules() if isinstance(m, DatasetBatchNorm2d)]
    bn_affine = [sum(count(layer.branches[d]) for layer in dataset_bns) for d in range(model.num_datasets)]
    head = [count(h) for h in model.heads.heads]
    total = count(model)
    return {"shared": total - sum(bn_affine) - sum(head), "bn_affine": bn_affine, "head": head, "total": total}


def branch_statistics(model: CrossDatasetSegmenter) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Layer name -> (running means (D, C), running variances (D, C)) of every dataset-aware BN."""
    if not isinstance(model, CrossDatasetSegmenter) or not model.dataset_bn:
        raise ValueError("branch_statistics needs a CrossDatasetSegmenter with dataset-aware BN (dataset_bn=True)")
    out = {}
    for name, layer in model.trunk.named_modules():
        if isinstance(layer, DatasetBatchNorm2d):
            means = torch.stack([b.running_mean.detach().clone() for b in layer.branches])
            variances = torch.stack([b.running_var.detach().clone() for b in layer.branches])
            out[name] = (means, variances)
    return out
