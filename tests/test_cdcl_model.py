"""CDCL's multi-dataset segmenter (kit.seg.cross_dataset): the catalog's invariants and bad input."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kit.seg.alternation import dat_loss
from kit.seg.cross_dataset import (CrossDatasetSegmenter, DatasetHeads, branch_statistics, joint_loss,
                                   parameter_accounting)
from kit.seg.dataset_bn import DatasetBatchNorm2d
from kit.seg.models import TinyFCN

LABELS = [6, 5, 7]  # A: 5 classes + background, B: two merged, C: one class more


def _images(seed, n=2, size=32, shift=0.0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) + shift


def _targets(seed, labels, n=2, size=32):
    return torch.randint(labels, (n, size, size), generator=torch.Generator().manual_seed(seed))


def _model(seed=0, dataset_bn=True, labels=LABELS):
    torch.manual_seed(seed)
    return CrossDatasetSegmenter(labels, dataset_bn=dataset_bn)


def _stats(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def _move_apart(model, seed=1):
    """Give every branch its own non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("training", [True, False])
def test_one_dataset_equals_the_plain_tiny_fcn(training):
    model = _move_apart(_model(labels=[6]))
    plain = TinyFCN(5)
    plain.load_state_dict(model.branch(0).state_dict())  # same weights, loaded into the chapter's own class
    model.train(training)
    plain.train(training)
    x = _images(2)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), model(xb, 0)
    torch.testing.assert_close(yb, ya, atol=1e-5, rtol=0)
    (ya * ya.detach()).sum().backward()
    (yb * yb.detach()).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.trunk.backbone.stem[0].weight.grad, plain.backbone.stem[0].weight.grad,
                               atol=1e-4, rtol=1e-4)
    if training:  # the running statistics moved the same way
        sa, sb = plain.state_dict(), model.branch(0).state_dict()
        for key in sa:
            if "running" in key:
                torch.testing.assert_close(sb[key], sa[key], atol=1e-6, rtol=0)


def test_a_training_forward_on_d_moves_only_bn_d_statistics():
    model = _model().train()
    for d in range(3):
        before = _stats(model)
        model(_images(d, shift=d), d)
        after = _stats(model)
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        assert moved, "the active branch must move"
        assert all(f".branches.{d}." in k for k in moved), sorted(moved)[:3]
        n_running = sum(f".branches.{d}.running_mean" in k for k in before)
        assert sum("running_mean" in k for k in moved) == n_running  # every layer's branch d moved
    # the shared-BN baseline moves its one set of statistics whatever the dataset
    shared = _model(dataset_bn=False).train()
    before = _stats(shared)
    shared(_images(0), 2)
    assert all(not torch.equal(before[k], v) for k, v in _stats(shared).items() if "running_mean" in k)


def test_dat_gradient_on_shared_weights_is_the_sum_of_per_dataset_gradients():
    batches = [(d, (_images(10 + d, shift=0.3 * d), _targets(20 + d, n))) for d, n in enumerate(LABELS)]
    for dataset_bn in (True, False):
        model = _model(dataset_bn=dataset_bn).train()
        reference = copy.deepcopy(model)
        joint_loss(model, batches).backward()
        summed = {}
        for d, batch in batches:
            single = copy.deepcopy(reference)
            single.loss(*batch, d).backward()
            for name, p in single.named_parameters():
                if p.grad is not None:
                    summed[name] = summed.get(name, 0) + p.grad
        shared = [n for n, _ in model.named_parameters() if ".branches." not in n and ".heads." not in n]
        assert len(shared) > 10
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, summed[name], atol=1e-6, rtol=1e-4)
        if dataset_bn:  # the BN branches and heads get only their own dataset's gradient
            head_grads = [model.heads.heads[d].weight.grad for d in range(3)]
            assert all(g is not None and g.abs().sum() > 0 for g in head_grads)
    # with dataset-aware BN, the kit's dat_loss (using_dataset around each loss) gives the same sum
    model = _model().train()
    other = copy.deepcopy(model)
    torch.testing.assert_close(joint_loss(model, batches),
                               dat_loss(other, batches, lambda m, d, b: m.loss(*b, d)), atol=1e-6, rtol=0)


def test_eval_with_branch_d_uses_only_its_own_statistics():
    model = _move_apart(_model()).eval()
    x = _images(3)
    with torch.no_grad():
        reference = {d: model(x, d) for d in range(3)}
        for d in range(3):  # the forward on d is dataset d's plain network
            torch.testing.assert_close(reference[d], model.branch(d).eval()(x), atol=1e-5, rtol=0)
        # scramble every other branch's statistics and affine: the output on d is bit-identical
        for d in range(3):
            scrambled = copy.deepcopy(model)
            for layer in scrambled.modules():
                if isinstance(layer, DatasetBatchNorm2d):
                    for e, branch in enumerate(layer.branches):
                        if e != d:
                            branch.running_mean.add_(5.0)
                            branch.running_var.mul_(7.0)
                            branch.weight.mul_(-3.0)
            assert torch.equal(scrambled(x, d), reference[d])
            # ... and changing branch d's statistics does change it
            shifted = copy.deepcopy(model)
            next(m for m in shifted.modules() if isinstance(m, DatasetBatchNorm2d)).branches[d].running_mean.add_(1.0)
            assert not torch.allclose(shifted(x, d), reference[d], atol=1e-3)
        # the wrong-BN forward: head of 0 with the statistics of 2 equals branch 2's convs+BN with head 0
        wrong = model.branch(2)
        wrong.classifier = copy.deepcopy(model.heads.heads[0])
        torch.testing.assert_close(model(x, 0, bn_dataset=2), wrong.eval()(x), atol=1e-5, rtol=0)


def test_parameter_count_is_shared_plus_d_times_bn_affine_plus_heads():
    plain = TinyFCN(5)
    bn_affine = sum(p.numel() for m in plain.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    plain_head = sum(p.numel() for p in plain.classifier.parameters())
    shared = sum(p.numel() for p in plain.parameters()) - bn_affine - plain_head
    heads = [32 * n + n for n in LABELS]  # 1x1 conv from 32 decoder channels, with bias
    model = _model()
    numbers = parameter_accounting(model)
    assert numbers["shared"] == shared and numbers["bn_affine"] == [bn_affine] * 3 and numbers["head"] == heads
    assert numbers["total"] == shared + 3 * bn_affine + sum(heads) == sum(p.numel() for p in model.parameters())
    naive = parameter_accounting(_model(dataset_bn=False))
    assert naive["bn_affine"] == [0, 0, 0] and naive["shared"] == shared + bn_affine
    assert naive["total"] == shared + bn_affine + sum(heads)
    assert parameter_accounting(_model(labels=[6]))["total"] == sum(p.numel() for p in plain.parameters())


def test_inference_flops_equal_the_single_dataset_model():
    x = _images(4, size=64)
    model = _model().eval()
    for d, labels in enumerate(LABELS):
        single = TinyFCN(labels - 1).eval()
        with torch.no_grad():
            with FlopCounterMode(display=False) as ours:
                model(x, d)
            with FlopCounterMode(display=False) as theirs:
                single(x)
        assert ours.get_total_flops() == theirs.get_total_flops() > 0


def test_branch_statistics_and_same_start_for_both_variants():
    model, naive = _model(seed=3), _model(seed=3, dataset_bn=False)
    convs = lambda m: [c.weight for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(convs(model), convs(naive)))  # same seed -> same start
    model.train()(_images(5, shift=1.0), 1)
    stats = branch_statistics(model)
    assert len(stats) == sum(isinstance(m, DatasetBatchNorm2d) for m in model.modules())
    means, variances = stats["backbone.stem.1"]
    assert means.shape == variances.shape == (3, 16)
    assert torch.equal(means[0], means[2]) and not torch.equal(means[0], means[1])
    with pytest.raises(ValueError, match="dataset-aware BN"):
        branch_statistics(naive)


def test_mixed_or_unknown_dataset_index_is_rejected():
    model = _model()
    x = _images(6)
    with pytest.raises(ValueError, match=r"one dataset.*\[0, 1\]"):
        model(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"in \[0, 3\), got 3"):
        model(x, 3)
    with pytest.raises(ValueError, match=r"in \[0, 3\), got -1"):
        model(x, -1)
    with pytest.raises(TypeError, match="int index"):
        model(x, 1.0)
    with pytest.raises(TypeError, match="missing"):
        model(x)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        model(x, 0, bn_dataset=5)
    with pytest.raises(ValueError, match="shares one BN"):
        _model(dataset_bn=False)(x, 0, bn_dataset=1)
    assert model(x, torch.tensor([2, 2])).shape == (2, 7, 32, 32)
    assert model.heads.active_dataset is None  # nothing left active after a forward


def test_bad_construction_and_joint_loss_input():
    with pytest.raises(ValueError, match="non-empty list"):
        CrossDatasetSegmenter([])
    with pytest.raises(ValueError, match=r"num_labels\[1\] must be >= 2"):
        CrossDatasetSegmenter([6, 1])
    with pytest.raises(TypeError, match=r"num_labels\[0\] must be an int"):
        CrossDatasetSegmenter([6.0])
    with pytest.raises(TypeError, match="dataset_bn"):
        CrossDatasetSegmenter([6], dataset_bn="yes")
    with pytest.raises(RuntimeError, match="no dataset is active"):
        DatasetHeads(8, [3])(torch.zeros(1, 8, 2, 2))
    model = _model()
    batch = (_images(7), _targets(7, 5))
    with pytest.raises(ValueError, match=r"one batch per dataset.*\[1, 1\]"):
        joint_loss(model, [(1, batch), (1, batch)])
    with pytest.raises(ValueError, match="at least one"):
        joint_loss(model, [])
    with pytest.raises(TypeError, match="CrossDatasetSegmenter"):
        joint_loss(TinyFCN(3), [(0, batch)])
    with pytest.raises(ValueError, match=r"label ids in \[0, 6\)"):  # dataset 0's labels scored with head 0 only
        model.loss(_images(8), _targets(8, 7), 0)
