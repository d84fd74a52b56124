"""CDCL's dataset-aware BN (kit.seg.dataset_bn) and dataset alternation (kit.seg.alternation)."""
import copy

import pytest
import torch
from torch import nn

from kit.seg.alternation import (alternating_batch_for, dat_loss, dataset_at, iteration_batches,
                                 sampled_dataset_at)
from kit.seg.dataset_bn import DatasetBatchNorm2d, convert_to_dataset_bn, set_dataset, using_dataset
from kit.seg.models import TinyFCN


def _pair(seed=0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn, DatasetBatchNorm2d.from_batchnorm(bn, 1)


@pytest.mark.parametrize("training", [True, False])
def test_one_dataset_equals_batchnorm(training):
    bn, dbn = _pair()
    bn.train(training)
    dbn.train(training)
    x = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(1))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = bn(xa), dbn(xb)  # no active dataset needed with one dataset
    torch.testing.assert_close(yb, ya, atol=1e-6, rtol=0)
    weights = torch.randn_like(ya)
    (ya * weights).sum().backward()
    (yb * weights).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(dbn.branches[0].weight.grad, bn.weight.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(dbn.branches[0].bias.grad, bn.bias.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(dbn.branches[0].running_mean, bn.running_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(dbn.branches[0].running_var, bn.running_var, atol=1e-6, rtol=0)


def test_running_stats_move_only_for_the_active_dataset():
    dbn = DatasetBatchNorm2d(4, 2)
    x = torch.randn(4, 4, 3, 3) * 3 + 2
    for active in (0, 1):
        before = [(b.running_mean.clone(), b.running_var.clone()) for b in dbn.branches]
        with using_dataset(dbn, active):
            dbn(x)
        for d, (branch, (mean, var)) in enumerate(zip(dbn.branches, before)):
            moved = not torch.equal(branch.running_mean, mean) and not torch.equal(branch.running_var, var)
            assert moved == (d == active)
    assert dbn.active_dataset is None  # restored on exit


def test_affine_parameters_are_per_dataset_and_gradients_reach_only_the_active_one():
    dbn = DatasetBatchNorm2d(4, 3)
    assert len({id(b.weight) for b in dbn.branches}) == 3
    with using_dataset(dbn, 2):
        dbn(torch.randn(2, 4, 3, 3)).pow(2).sum().backward()
    assert dbn.branches[2].weight.grad is not None
    assert dbn.branches[0].weight.grad is None and dbn.branches[1].weight.grad is None


def test_per_sample_ids_of_one_dataset_select_it_and_eval_uses_that_branch():
    dbn = DatasetBatchNorm2d(2, 2).eval()
    with torch.no_grad():
        dbn.branches[1].running_mean.fill_(1.0)
    x = torch.ones(3, 2, 2, 2)
    torch.testing.assert_close(dbn(x, dataset=torch.tensor([1, 1, 1])), torch.zeros_like(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(dbn(x, dataset=0), x / (1 + 1e-5) ** 0.5, atol=1e-6, rtol=0)


def _fcn(seed=0):
    torch.manual_seed(seed)
    model = TinyFCN(3)
    for m in model.modules():  # non-trivial BN state, so the copy is really checked
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_converted_tiny_fcn_keeps_its_outputs_and_shares_its_convolutions():
    model = _fcn()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(images)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    converted = convert_to_dataset_bn(copy.deepcopy(model), 2)
    assert sum(isinstance(m, DatasetBatchNorm2d) for m in converted.modules()) == n_bn > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules()
                   if not any(m is b for d in converted.modules() if isinstance(d, DatasetBatchNorm2d)
                              for b in d.branches))
    for d in (0, 1):
        with torch.no_grad(), using_dataset(converted, d):
            torch.testing.assert_close(converted(images), expected, atol=1e-6, rtol=0)
    convs = [m for m in converted.modules() if isinstance(m, nn.Conv2d)]
    n_conv_params = sum(p.numel() for c in convs for p in c.parameters())
    assert n_conv_params == sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    # one Parameter per conv, used by both datasets: gradients from either dataset land on it
    conv = convs[0]
    converted.train()
    for d in (0, 1):
        conv.weight.grad = None
        with using_dataset(converted, d):
            converted(images).sum().backward()
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in converted.parameters()) > sum(p.numel() for p in model.parameters())


def test_convert_a_bare_batchnorm_and_set_dataset():
    bn = nn.BatchNorm2d(3)
    dbn = convert_to_dataset_bn(bn, 3)
    assert isinstance(dbn, DatasetBatchNorm2d) and dbn.num_datasets == 3
    assert convert_to_dataset_bn(dbn, 3) is dbn
    set_dataset(dbn, 2)
    assert dbn.active_dataset == 2
    set_dataset(dbn, None)
    assert dbn.active_dataset is None


def test_using_dataset_restores_on_exception():
    dbn = DatasetBatchNorm2d(2, 2)
    set_dataset(dbn, 0)
    with pytest.raises(KeyError):
        with using_dataset(dbn, 1):
            assert dbn.active_dataset == 1
            raise KeyError
    assert dbn.active_dataset == 0


def test_schedule_is_deterministic_round_robin_and_covers_every_dataset():
    steps = [dataset_at(t, 3) for t in range(12)]
    assert steps == [0, 1, 2] * 4
    assert steps == [dataset_at(t, 3) for t in range(12)]
    for t0 in range(0, 12, 3):  # every window of D consecutive batch steps (one iteration) covers all datasets
        assert sorted(steps[t0:t0 + 3]) == [0, 1, 2]
    assert all(dataset_at(t, 1) == 0 for t in range(5))


def test_combinator_returns_the_right_dataset_batch():
    fors = [lambda s, d=d: ("batch", d, s) for d in range(3)]
    batch_for = alternating_batch_for(fors)
    for t in range(10):
        dataset, batch = batch_for(t)
        assert dataset == t % 3 and batch == ("batch", t % 3, t // 3)
    assert iteration_batches(fors)(4) == [(d, ("batch", d, 4)) for d in range(3)]


def test_combinator_over_generated_dataset_batch_for():
    from kit.data.seg_scenes import SegSceneConfig, generate
    sets = [generate(SegSceneConfig(num_images=n, image_size=32, seed=seed), use_cache=False)
            for n, seed in ((6, 0), (4, 1))]
    fors = [ds.batch_for(2, seed=5) for ds in sets]
    batch_for = alternating_batch_for(fors)
    for t in range(6):
        dataset, batch = batch_for(t)
        expected = fors[t % 2](t // 2)
        assert dataset == t % 2
        assert all(torch.equal(a, b) for a, b in zip(batch, expected))


def test_dat_loss_sums_each_dataset_loss_under_its_own_branch():
    dbn = DatasetBatchNorm2d(2, 2)
    seen = []

    def loss_of(model, dataset, batch):
        seen.append((dataset, model.active_dataset))
        return model(batch).pow(2).mean()

    batches = [(0, torch.randn(2, 2, 3, 3)), (1, torch.randn(2, 2, 3, 3) + 1)]
    total = dat_loss(dbn, batches, loss_of)
    assert seen == [(0, 0), (1, 1)] and dbn.active_dataset is None
    total.backward()
    assert dbn.branches[0].weight.grad is not None and dbn.branches[1].weight.grad is not None


def test_sampled_schedule_is_deterministic_and_follows_weights():
    draws = [sampled_dataset_at(t, [6, 3, 1], seed=7) for t in range(3000)]
    assert draws == [sampled_dataset_at(t, [6, 3, 1], seed=7) for t in range(3000)]
    freq = torch.bincount(torch.tensor(draws), minlength=3).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.04, rtol=0)
    assert {sampled_dataset_at(t, [0, 1], seed=0) for t in range(50)} == {1}
