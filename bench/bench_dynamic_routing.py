"""Time the routing space (P23) with its static special cases as fixed gates: do saved FLOPs save time?

The P23 page's cpu network (5 layers x 3 scales, 16 base channels, a 16-channel decoder, 6 labels),
batch 16 of 64-px images, in evaluation mode, one forward per call (no gradient). For every fixed-gate
network — Raw (every gate 1), FCN-, U-Net-, HRNet-like and the HRNet-like cut to 40 % of the full
space's cost — its real FLOPs (the kit's FLOP model, routing space only, and the whole network counted
by ``torch.utils.flop_counter.FlopCounterMode``) beside its wall time, both relative to Raw. A closed
cell is skipped, so the time should fall with the FLOPs; the stem, the decoder and the gates' own
convolutions run whatever the routes. Threads: ``KIT_THREADS`` if set, else the cores available
(``kit.setup``). Runs in well under a minute.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import kit
from kit.seg.dynamic_routing import DynamicRoutingNet, matched_hrnet_gates, special_case_gates
from _timing import time_call  # bench/_timing.py, beside this script

LAYERS, SCALES, BASE, DECODER, CLASSES, BATCH, SIZE = 5, 3, 16, 16, 5, 16, 64


def network(gates) -> DynamicRoutingNet:
    torch.manual_seed(0)
    return DynamicRoutingNet(CLASSES, LAYERS, SCALES, BASE, DECODER, fixed_gates=gates).eval()


def counted_flops(model, images) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


def main():
    kit.setup(0)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    probe = network(None)
    gates = {name: special_case_gates(probe.space, name) for name in ("raw", "fcn", "unet", "hrnet")}
    gates["hrnet cut to 0.4"] = matched_hrnet_gates(probe, SIZE, 0.4)
    print(f"Routing space {LAYERS} x {SCALES}, C0 {BASE}, batch {BATCH} x {SIZE} px, eval forward, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'network':<18} {'routing FLOPs':>14} {'whole net (counted)':>20} {'time':>9} {'time / Raw':>11}")
    raw_time = raw_counted = None
    for name, fixed in gates.items():
        model = network(fixed)
        with torch.no_grad():
            routing = float(model(images).real_flops.mean()) / model.max_flops(SIZE)
            seconds = time_call(lambda: model(images), repeats=5)
        counted = counted_flops(model, images)
        raw_time, raw_counted = raw_time or seconds, raw_counted or counted
        print(f"{name:<18} {100 * routing:>12.0f} % {100 * counted / raw_counted:>18.0f} % "
              f"{1000 * seconds:>7.1f}ms {seconds / raw_time:>10.2f}x")
    print(f"routing FLOPs: % of the full space's C_max; whole net: FlopCounterMode's count, % of Raw's "
          f"({raw_counted / BATCH / 1e6:.2f} MFLOPs per image)")


if __name__ == "__main__":
    main()
