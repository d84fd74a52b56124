"""Dynamic routing (kit.seg.dynamic_routing, P23): the catalog's invariants, FLOPs against FlopCounterMode,
the static special cases and the budget loss (bad input: tests/test_bad_input_seg.py)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kit.seg.dynamic_routing import (DROP_THRESHOLD, DynamicRoutingNet, RoutingCell, RoutingSpace, budget_loss,
                                     budget_rate, matched_hrnet_gates, soft_gate, special_case_gates)


def _images(seed, n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _net(seed=0, layers=5, scales=3, **kwargs):
    torch.manual_seed(seed)
    return DynamicRoutingNet(4, layers, scales, base_channels=8, decoder_channels=8, **kwargs)


def _counted(fn, *args):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def _open(gates):
    """{cell: gates} -> {cell: open routes} of a fixed-gate network (cells with nothing open left out)."""
    space = RoutingSpace(5, 3)
    return {cell: {r for r, v in zip(space.routes(*cell), g) if v > 0} for cell, g in gates.items() if g.sum() > 0}


def test_soft_gate_range_and_zero_gradient_region():
    x = torch.linspace(-6, 6, 241, requires_grad=True)
    gate = soft_gate(x)
    assert gate.min() == 0 and gate.max() < 1
    assert torch.equal(gate[x <= 0], torch.zeros(int((x <= 0).sum())))
    torch.testing.assert_close(gate[x > 0], torch.tanh(x[x > 0]))
    gate.sum().backward()
    assert torch.equal(x.grad[x <= 0], torch.zeros(int((x <= 0).sum())))  # closed gates get no gradient
    assert (x.grad[x > 0] > 0).all()
    torch.testing.assert_close(soft_gate(torch.tensor(1.5)), torch.tensor(0.9051), atol=1e-4, rtol=0)  # the bias


def test_gates_are_per_image_constants_in_the_official_order():
    cell = RoutingCell(8, allow_up=True, allow_down=True).eval()
    assert cell.routes == ["keep", "up", "down"]
    assert RoutingCell(8, allow_up=False, allow_down=True).routes == ["keep", "down"]
    out = cell(torch.randn(3, 8, 8, 8))
    assert out.gates.shape == (3, 3) and (out.gates > 0).all()  # bias 1.5 opens every path at the start
    assert not torch.allclose(out.gates[0], out.gates[1])  # one gate vector per image
    assert out.up.shape == (3, 4, 16, 16) and out.down.shape == (3, 16, 4, 4) and out.keep.shape == (3, 8, 8, 8)


def test_routing_space_edges():
    space = RoutingSpace(5, 3)
    assert space.cells()[:3] == [(1, 0), (2, 0), (2, 1)] and len(space.cells()) == 12
    for layer, scale in space.cells():
        routes = space.routes(layer, scale)
        assert ("up" in routes) == (scale > 0 and layer < 5)  # no up-route at the finest scale
        assert ("down" in routes) == (scale < 2 and layer < 5)  # no down-route at the coarsest
    assert space.routes(5, 1) == ["keep"]


def test_a_dropped_cell_passes_its_input_and_costs_nothing():
    cell = RoutingCell(8, allow_up=True, allow_down=True).eval()
    x = torch.randn(2, 8, 8, 8)
    # per image: image 0 all gates 0 (dropped), image 1 all open
    out = cell(x, fixed_gates=torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert torch.equal(out.keep[0], x[0]) and out.up[0].abs().sum() == 0 and out.down[0].abs().sum() == 0
    assert out.real_flops[0] == 0 == out.expected_flops[0]
    full = cell.cell_flops(8, 8) + sum(cell.transition_flops(8, 8).values())
    assert out.real_flops[1] == full and out.runs.tolist() == [False, True]
    # learned gates closed by a negative bias: the same, and the SepConv never runs
    with torch.no_grad():
        cell.gate.to_routes.bias.fill_(-50.0)
    ran = []
    hook = cell.op.register_forward_hook(lambda *a: ran.append(1))
    out = cell(x)
    hook.remove()
    assert not ran and torch.equal(out.keep, x) and (out.real_flops == 0).all() and (out.gates == 0).all()
    assert (out.gate_flops > 0).all()  # the gate itself ran: its cost is reported apart
    # an image that sent nothing here: inactive, no gate, no cost
    out = cell(torch.zeros(2, 8, 8, 8), active=torch.tensor([False, True]))
    assert out.gate_flops[0] == 0 and out.real_flops[0] == 0 and out.gates[0].abs().sum() == 0


def test_closing_a_cell_in_a_network_is_the_identity_there():
    net = _net().eval()
    gates = special_case_gates(net.space, "raw")
    gates[2, 0] = torch.zeros(2)  # cell (2, 0) closed: its input goes on unchanged, keep only
    net.fixed_gates = gates
    x = _images(1)
    features = net.stem(x)
    with torch.no_grad():
        first = net.cell(1, 0)(features, fixed_gates=gates[1, 0])
        second = net.cell(2, 0)(first.keep, fixed_gates=gates[2, 0])
        assert torch.equal(second.keep, first.keep) and second.up is None
        out = net(x)
    assert torch.allclose(out.real_flops, torch.full((2,), net.static_flops(gates, 32)))
    assert net.static_flops(gates, 32) == net.max_flops(32) - net.cell(2, 0).cell_flops(8, 8) - net.cell(
        2, 0).transition_flops(8, 8)["down"]


def test_special_cases_give_the_expected_paths():
    space = RoutingSpace(5, 3)
    assert _open(special_case_gates(space, "fcn")) == {
        (1, 0): {"down"}, (2, 1): {"down"}, (3, 2): {"keep"}, (4, 2): {"keep"}, (5, 2): {"keep"}}
    assert _open(special_case_gates(space, "unet")) == {
        (1, 0): {"keep", "down"}, (2, 0): {"keep"}, (2, 1): {"keep", "down"}, (3, 0): {"keep"}, (3, 1): {"keep"},
        (3, 2): {"up"}, (4, 0): {"keep"}, (4, 1): {"up"}, (5, 0): {"keep"}}
    assert _open(special_case_gates(space, "hrnet")) == {
        **{cell: {"keep"} for cell in space.cells()}, (1, 0): {"keep", "down"}, (2, 1): {"keep", "down"}}
    assert all(g.sum() == len(space.routes(*c)) for c, g in special_case_gates(space, "raw").items())
    # what reaches the decoder: FCN only the coarsest scale, U-Net only 1/4, HRNet and Raw every scale
    x = _images(2)
    for name, scales in (("fcn", {2}), ("unet", {0}), ("hrnet", {0, 1, 2}), ("raw", {0, 1, 2})):
        net = _net().eval()
        with torch.no_grad():
            outputs = net.routing(net.stem(x), special_case_gates(net.space, name))[0]
        assert {s for s, v in outputs.items() if v.abs().sum() > 0} == scales, name
    # all gates 1 is the static fully connected network: the same as the dynamic net with gates forced open
    dynamic = _net()
    for cell in dynamic.cells.values():
        with torch.no_grad():
            cell.gate.to_routes.weight.zero_()
            cell.gate.to_routes.bias.fill_(50.0)  # tanh(50) == 1.0 in float32
    raw = _net(fixed_gates=special_case_gates(RoutingSpace(5, 3), "raw"))
    dynamic.eval(), raw.eval()
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x).logits, raw(x).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["raw", "fcn", "unet", "hrnet", "matched"])
def test_expected_flops_equal_real_flops_for_binary_gates(name):
    net = _net()
    gates = matched_hrnet_gates(net, 32, 0.4) if name == "matched" else special_case_gates(net.space, name)
    net.fixed_gates = gates
    out = net.train()(_images(3))
    torch.testing.assert_close(out.expected_flops, out.real_flops, rtol=1e-6, atol=0)
    assert torch.allclose(out.real_flops, torch.full((2,), net.static_flops(gates, 32)))
    if name == "matched":
        assert net.static_flops(gates, 32) <= 0.4 * net.max_flops(32) < net.static_flops(
            special_case_gates(net.space, "hrnet"), 32)


def test_per_cell_flops_agree_with_flop_counter():
    for allow_up, allow_down, side in ((True, True, 8), (False, True, 16), (True, False, 4)):
        cell = RoutingCell(8, allow_up, allow_down).eval()
        x = torch.randn(1, 8, side, side)
        assert _counted(cell.op, x) == cell.cell_flops(side, side)
        assert _counted(cell.gate, x) == cell.gate.flops(side, side)
        trans = cell.transition_flops(side, side)
        if allow_up:
            assert _counted(cell.up_route, x) == trans["up"]
        if allow_down:
            assert _counted(cell.down_route, x) == trans["down"]
        out = cell(x)
        assert _counted(cell, x) == out.real_flops.item() + out.gate_flops.item()


@pytest.mark.parametrize("name", [None, "fcn", "unet"])
def test_network_flops_are_real_plus_gates_plus_stem_and_decoder(name):
    net = _net(fixed_gates=None if name is None else special_case_gates(RoutingSpace(5, 3), name)).eval()
    x = _images(4, n=1)
    with torch.no_grad():
        out = net(x)
        outputs = net.routing(net.stem(x), net.fixed_gates)[0]
    fixed = _counted(net.stem, x) + sum(_counted(net.lateral[s], v) for s, v in outputs.items())
    fixed += _counted(net.fuse, torch.zeros(1, 8, 8, 8)) + _counted(net.classifier, torch.zeros(1, 8, 8, 8))
    assert _counted(net, x) == out.real_flops.item() + out.gate_flops.item() + fixed
    if name is not None:
        assert out.gate_flops.item() == 0  # fixed gates: no gate runs


def test_batch_forward_is_the_per_image_forward_in_eval():
    net = _net(seed=3).eval()
    for cell in list(net.cells.values())[::2]:  # close some routes for some images: negative-leaning gates
        with torch.no_grad():
            cell.gate.to_routes.bias.fill_(0.0)
            cell.gate.to_routes.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(5))
    x = _images(5, n=4)
    with torch.no_grad():
        batch = net(x)
        singles = [net(x[i:i + 1]) for i in range(4)]
    torch.testing.assert_close(batch.logits, torch.cat([s.logits for s in singles]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.real_flops, torch.cat([s.real_flops for s in singles]))
    closed = torch.cat([g.flatten() for g in batch.gates.values()])
    assert (closed == 0).any() and (closed > 0).any()  # the test exercises both kinds of gates


def test_budget_loss_value_and_gradient():
    expected = torch.tensor([30.0, 50.0], requires_grad=True)
    loss = budget_loss(expected, max_flops=100.0, mu=0.4, weight=2.0, rate=0.5)
    torch.testing.assert_close(loss, torch.tensor(2.0 * 0.5 * (0.4 - 0.4) ** 2))
    assert budget_loss(torch.tensor([40.0]), 100.0, 0.4, 2.0) == 0  # L_C = 0 at C / C_max = mu
    expected = torch.tensor([60.0, 80.0], requires_grad=True)
    loss = budget_loss(expected, 100.0, 0.4, 2.0, 1.0)
    torch.testing.assert_close(loss, torch.tensor(2.0 * (0.7 - 0.4) ** 2))
    loss.backward()
    torch.testing.assert_close(expected.grad, torch.full((2,), 2.0 * 2.0 * (0.7 - 0.4) / 100.0 / 2))
    # through the gates of one cell: dC/d logit = delta'(z) * [C_cell at the max gate, C_up, C_down] per image
    cell = RoutingCell(8, True, True).train()
    x = torch.randn(3, 8, 8, 8)
    out = cell(x)
    out.expected_flops.sum().backward()
    with torch.no_grad():
        z = cell.gate(x)  # (3, 3) logits, the same batch statistics
        slope = 1 - torch.tanh(z) ** 2  # delta'(z) where the gate is open (all are, bias 1.5)
        trans = cell.transition_flops(8, 8)
        cost = torch.tensor([0.0, trans["up"], trans["down"]]).expand(3, 3).clone()
        cost[torch.arange(3), soft_gate(z).argmax(1)] += cell.cell_flops(8, 8)
    torch.testing.assert_close(cell.gate.to_routes.bias.grad, (slope * cost).sum(0), rtol=1e-5, atol=1e-3)
    # in the network the budget loss reaches every gate
    net = _net()
    out = net.train()(_images(6))
    budget_loss(out.expected_flops, net.max_flops(32), 0.1, 1.0).backward()
    assert all(c.gate.to_routes.bias.grad is not None and (c.gate.to_routes.bias.grad != 0).all()
               for c in net.cells.values())
    assert budget_rate(0, 100) == 0 and budget_rate(39, 100) == 0 and budget_rate(44, 100) == 0.5
    assert budget_rate(49, 100) == 1.0 == budget_rate(99, 100)




def test_drop_threshold_is_the_official_one():
    cell = RoutingCell(8, True, True).eval()
    x = torch.randn(1, 8, 4, 4)
    below = cell(x, fixed_gates=torch.full((3,), DROP_THRESHOLD / 4))
    above = cell(x, fixed_gates=torch.full((3,), DROP_THRESHOLD))
    assert below.runs.tolist() == [False] and torch.equal(below.keep, x)
    assert above.runs.tolist() == [True] and above.real_flops.item() > 0
