import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kit.nn.sparse_resnet import SparseSegNet, flop_report


def make(sparse=True, bias=None):
    torch.manual_seed(0)
    net = SparseSegNet(num_classes=3, channels=8, planes=4, blocks=2, sparse=sparse)
    if bias is not None:
        for block in net.blocks:
            torch.nn.init.constant_(block.mask1.bias, bias)
            torch.nn.init.constant_(block.mask2.bias, bias)
    return net


def count(net, images, seed=0):
    with FlopCounterMode(display=False) as counter:
        net(images, generator=torch.Generator().manual_seed(seed))
    return counter.get_total_flops()


def test_shapes_and_initial_density():
    net = make()
    logits = net(torch.rand(2, 3, 24, 24))
    assert logits.shape == (2, 3, 24, 24)
    assert abs(net.blocks[0].last["p1"].mean().item() - 1 / (1 + math.exp(-3))) < 1e-6  # bias 3: p = 0.95
    assert make(sparse=False)(torch.rand(2, 3, 24, 24)).shape == (2, 3, 24, 24)


def test_sparse_test_path_equals_dense_conv_then_mask():
    net = make(bias=0.0).eval()  # p = 0.5: about half the positions sampled
    with torch.no_grad():
        for block in net.blocks:  # a non-trivial mask predictor
            torch.nn.init.normal_(block.mask1.weight, std=0.5)
            torch.nn.init.normal_(block.mask2.weight, std=0.5)
    images = torch.rand(2, 3, 24, 24)
    sparse = net(images, generator=torch.Generator().manual_seed(3))
    density = net.densities()["m2"][0]
    net.set_compute("dense")
    dense = net(images, generator=torch.Generator().manual_seed(3))
    assert 0.2 < density < 0.8
    assert torch.allclose(sparse, dense, atol=1e-5)


def test_real_flops_fall_with_the_mask_density():
    images = torch.rand(1, 3, 32, 32)
    dense_net_flops = count(make(sparse=False).eval(), images)
    almost_dense = count(make(bias=10.0).eval(), images)
    grid_only = make(bias=-10.0).eval()
    sparse_flops = count(grid_only, images)
    assert grid_only.densities()["m1"] == [4 / 256, 4 / 256]  # only the grid prior (every 11 px of 16)
    assert sparse_flops < almost_dense and almost_dense > dense_net_flops  # masks + interpolation cost extra
    # the conv1 / conv2 multiply-adds of two blocks at density 1 minus those at 4 positions
    per_position = 2 * (8 * 4 + 4 * 4 * 9)
    assert almost_dense - sparse_flops == 2 * per_position * (256 - 4)


def test_flop_report_real_and_expected():
    images = torch.rand(2, 3, 32, 32)
    dense = flop_report(make(sparse=False), images)
    assert dense["real"] == dense["expected"] == count(make(sparse=False).eval(), images) / 2
    near_dense = flop_report(make(bias=12.0), images, torch.Generator().manual_seed(0))
    # p ~ 1: every position sampled, expected = real
    assert abs(near_dense["expected"] - near_dense["real"]) / near_dense["real"] < 1e-4
    half = flop_report(make(bias=0.0), images, torch.Generator().manual_seed(0))  # p = 0.5 everywhere
    assert 0.4 < half["densities"]["m1"][0] < 0.6
    assert abs(half["expected"] - half["real"]) / half["real"] < 0.05  # a Bernoulli(0.5) sample over 512 positions


def test_sparsity_loss_uses_probabilities_and_trains_the_mask_predictor():
    net = make().train()
    net(torch.rand(2, 3, 16, 16), temperature=0.5)
    loss = net.sparsity_loss()
    assert abs(loss.item() - 1 / (1 + math.exp(-3))) < 1e-5
    loss.backward()
    assert net.blocks[0].mask1.bias.grad > 0 and net.blocks[1].mask2.bias.grad > 0
    assert make(sparse=False).sparsity_loss() == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="compute"):
        make().set_compute("half")
    with pytest.raises(ValueError, match="no masks"):
        make(sparse=False).densities()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        make()(torch.rand(3, 16, 16))
