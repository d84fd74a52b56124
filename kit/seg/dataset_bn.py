"""Dataset-aware batch normalisation: the Dataset-Aware Block (DAB) of CDCL (P33).

Cross-Dataset Collaborative Learning (Wang et al., arXiv 2103.11351) trains ONE segmenter on
several datasets at once. Its Dataset-Aware Block keeps the convolution "dataset-invariant"
(one weight shared by every dataset) and gives each dataset its own batch normalisation:

    DAB_d(x) = gamma_d * (W * x - mu_d) / sqrt(sigma_d^2 + eps) + beta_d,

so both the statistics (mu_d, sigma_d: batch statistics in training, running statistics in
eval) AND the affine parameters (gamma_d, beta_d) are per dataset (the paper's equation for the
dataset-specific BN; as in DSBN, Chang et al. CVPR 2019, ``woozch/DSBN``'s
``DomainSpecificBatchNorm2d``, one ``BatchNorm2d`` per domain). No official CDCL code was found
(the abstract says "will be released"), so the details follow the paper text and DSBN.

Choices:
- :class:`DatasetBatchNorm2d` holds one plain ``torch.nn.BatchNorm2d`` per dataset, so each
  branch is exactly PyTorch's BN (same numerics, same state-dict keys under ``branches.d``).
- A batch comes from ONE dataset (DSBN likewise routes the whole batch by ``domain_label[0]``;
  here a mixed label vector is refused instead of silently taking the first label).
- The active dataset is state on the BN modules, set for the whole model by :func:`set_dataset`
  or, scoped, by :func:`using_dataset`, so models such as :class:`kit.seg.models.TinyFCN` need
  no new forward signature. With one dataset that branch is always active.
- :func:`convert_to_dataset_bn` deep-copies each ``BatchNorm2d`` into every branch (weights,
  running statistics, eps, momentum, device, dtype), so a converted model computes exactly what
  the original did until training moves the branches apart.
"""
from __future__ import annotations

import contextlib
import copy
import operator

import torch
from torch import nn

__all__ = ["DatasetBatchNorm2d", "convert_to_dataset_bn", "set_dataset", "using_dataset", "dataset_of_batch"]


def _check_num_datasets(num_datasets) -> int:
    if isinstance(num_datasets, bool) or not isinstance(num_datasets, int):
        raise TypeError(f"num_datasets must be an int, got {type(num_datasets).__name__}")
    if num_datasets < 1:
        raise ValueError(f"num_datasets must be >= 1, got {num_datasets}")
    return num_datasets


def dataset_of_batch(dataset, num_datasets: int) -> int:
    """The one dataset index of a batch: ``dataset`` is an int, or a 1-d integer tensor of
    per-sample dataset ids that must all be equal (a batch comes from ONE dataset)."""
    if isinstance(dataset, torch.Tensor) and dataset.dim() > 0:
        if dataset.dim() != 1 or dataset.dtype.is_floating_point or dataset.dtype == torch.bool:
            raise TypeError(f"per-sample dataset ids must be a 1-d integer tensor, "
                            f"got {dataset.dtype} of shape {tuple(dataset.shape)}")
        if dataset.numel() == 0:
            raise ValueError("per-sample dataset ids are empty: give the dataset index as an int")
        ids = torch.unique(dataset).tolist()
        if len(ids) != 1:
            raise ValueError(f"a batch must come from one dataset (dataset-specific BN normalises it "
                             f"with one dataset's statistics), got samples of datasets {ids}")
        dataset = ids[0]
    if isinstance(dataset, bool) or isinstance(dataset, float):
        raise TypeError(f"dataset must be an int index, got {type(dataset).__name__}")
    try:
        index = operator.index(dataset)
    except TypeError:
        raise TypeError(f"dataset must be an int index, got {type(dataset).__name__}") from None
    if not 0 <= index < num_datasets:
        raise ValueError(f"dataset index must be in [0, {num_datasets}), got {index}")
    return index


class DatasetBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per dataset (own running statistics and own gamma, beta); the input
    (B, C, H, W) is normalised by the branch of the active dataset (:func:`using_dataset`)."""

    def __init__(self, num_features: int, num_datasets: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        self.num_datasets = _check_num_datasets(num_datasets)
        self.num_features = num_features
        self.branches = nn.ModuleList(
            nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
            for _ in range(self.num_datasets))
        self.active_dataset: int | None = None

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, num_datasets: int) -> "DatasetBatchNorm2d":
        """Every branch a copy of ``bn`` (parameters, buffers, settings, device, dtype)."""
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"bn must be a torch.nn.BatchNorm2d, got {type(bn).__name__}")
        module = cls(bn.num_features, num_datasets, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                     device="meta")
        module.branches = nn.ModuleList(copy.deepcopy(bn) for _ in range(module.num_datasets))
        module.train(bn.training)
        return module

    def set_dataset(self, dataset) -> None:
        """Make ``dataset`` (int, per-sample ids, or None to clear) the active branch."""
        self.active_dataset = None if dataset is None else dataset_of_batch(dataset, self.num_datasets)

    def forward(self, x: torch.Tensor, dataset=None) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W) through the branch of ``dataset`` (default: the active one)."""
        if dataset is not None:
            index = dataset_of_batch(dataset, self.num_datasets)
        elif self.active_dataset is not None:
            index = self.active_dataset
        elif self.num_datasets == 1:
            index = 0
        else:
            raise RuntimeError(f"no dataset is active in a DatasetBatchNorm2d of {self.num_datasets} datasets: "
                               f"run the forward inside kit.seg.dataset_bn.using_dataset(model, d)")
        return self.branches[index](x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_datasets={self.num_datasets}, active_dataset={self.active_dataset}"


def convert_to_dataset_bn(module: nn.Module, num_datasets: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` (in place) by a :class:`DatasetBatchNorm2d`
    initialised from it; returns the module (the new one if ``module`` itself is a BatchNorm2d).
    Subclasses of ``BatchNorm2d`` are converted too; existing DatasetBatchNorm2d are left alone."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    _check_num_datasets(num_datasets)
    if isinstance(module, nn.BatchNorm2d):
        return DatasetBatchNorm2d.from_batchnorm(module, num_datasets)
    if isinstance(module, DatasetBatchNorm2d):
        return module
    for name, child in module.named_children():
        converted = convert_to_dataset_bn(child, num_datasets)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _dataset_bns(module: nn.Module) -> list[DatasetBatchNorm2d]:
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    layers = [m for m in module.modules() if isinstance(m, DatasetBatchNorm2d)]
    if not layers:
        raise ValueError(f"{type(module).__name__} has no DatasetBatchNorm2d: convert it with convert_to_dataset_bn first")
    return layers


def set_dataset(module: nn.Module, dataset) -> None:
    """Make ``dataset`` (an int, 1-d per-sample ids of one dataset, or None) active in every
    DatasetBatchNorm2d of ``module``; validated against each layer before any is changed."""
    layers = _dataset_bns(module)
    if dataset is not None:
        for layer in layers:
            dataset_of_batch(dataset, layer.num_datasets)
    for layer in layers:
        layer.set_dataset(dataset)


@contextlib.contextmanager
def using_dataset(module: nn.Module, dataset):
    """``with using_dataset(model, d): model(images)`` — dataset ``d`` active inside, the previous
    active datasets restored on exit (also on an exception)."""
    layers = _dataset_bns(module)
    previous = [layer.active_dataset for layer in layers]
    set_dataset(module, dataset)
    try:
        yield module
    finally:
        for layer, index in zip(layers, previous):
            layer.active_dataset = index
