"""Time the kit's federated LVIS box AP (``kit.eval.lvis``, on pycocotools' COCOeval) beside the
``lvis`` package's ``LVISEval`` on the same synthetic set, and print both results.

The set: a 500-image long-tailed validation split of 64 px (``kit.data.longtail_scenes``, 30
classes, groups from a 1500-image training split) with 60 detections per image: every true
object once, jittered, scored in [0.4, 1), and the rest random boxes of random classes scored
in [0, 0.7). Both
evaluators get the same LVIS json and result dicts. ``import lvis`` needs cv2 (for drawing
only) and ``LVISEval`` uses ``np.float``: a stand-in and an alias are set as in
tests/_lvis_reference.py. Threads: ``KIT_THREADS`` if set, else the cores available
(``kit.setup``). Runs in under a minute.
"""
from __future__ import annotations

import json
import logging
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

import kit
from kit.data.longtail_scenes import LongTailSceneConfig, class_groups, generate, to_lvis
from kit.eval.coco import detections_to_coco
from kit.eval.lvis import METRICS, lvis_evaluate
from _timing import time_call  # bench/_timing.py, beside this script

DETS_PER_IMAGE = 60


def synthetic_detections(scenes, generator) -> list[dict]:
    """Per image: the true objects jittered by ~2 px, then random boxes of random classes, random scores."""
    out = []
    size, classes = scenes.config.image_size, scenes.config.num_classes
    for i in range(len(scenes)):
        boxes, labels = scenes.targets(i, truth=True)
        extra = DETS_PER_IMAGE - len(boxes)
        xy = torch.rand(extra, 2, generator=generator) * (size - 8)
        wh = 4 + torch.rand(extra, 2, generator=generator) * 20
        noise = torch.randn(boxes.shape, generator=generator) * 2
        out.append({"boxes": torch.cat([boxes + noise, torch.cat([xy, xy + wh], 1)]),
                    "scores": torch.cat([0.4 + 0.6 * torch.rand(len(boxes), generator=generator),
                                         0.7 * torch.rand(extra, generator=generator)]),
                    "labels": torch.cat([labels, torch.randint(classes, (extra,), generator=generator)])})
    return out


def lvis_package():
    if "cv2" not in sys.modules:
        try:
            import cv2  # noqa: F401
        except ImportError:
            sys.modules["cv2"] = types.ModuleType("cv2")
    if "float" not in np.__dict__:
        np.float = float
    import lvis
    logging.getLogger("lvis").setLevel(logging.ERROR)
    return lvis


def main():
    kit.setup(0)
    print(f"{torch.get_num_threads()} thread(s)")
    train = generate(LongTailSceneConfig(1500, seed=0))
    val = generate(LongTailSceneConfig(500, seed=1))
    gt = to_lvis(val, class_groups(train))
    detections = synthetic_detections(val, torch.Generator().manual_seed(0))
    results = detections_to_coco(detections, list(range(len(val))))
    lvis = lvis_package()
    folder = Path(tempfile.mkdtemp())
    (folder / "gt.json").write_text(json.dumps(gt))
    lvis_gt = lvis.LVIS(str(folder / "gt.json"))

    def reference():
        evaluator = lvis.LVISEval(lvis_gt, lvis.LVISResults(lvis_gt, [dict(r) for r in results]), "bbox")
        evaluator.run()
        return evaluator.results

    ours, theirs = lvis_evaluate(gt, detections), reference()
    kit_s = time_call(lambda: lvis_evaluate(gt, detections), repeats=3)
    ref_s = time_call(reference, repeats=3)
    print(f"Federated box AP, {len(val)} images of 64 px, {len(results):,} detections, {len(gt['annotations']):,} objects")
    print(f"  kit.eval.lvis (pycocotools COCOeval)  {kit_s:>6.2f} s")
    print(f"  lvis.LVISEval                         {ref_s:>6.2f} s   ({ref_s / kit_s:.1f}x the kit's time)")
    for name in METRICS:
        print(f"  {name:<5} kit {ours[name]:.6f}   lvis {theirs[name]:.6f}   |difference| {abs(ours[name] - theirs[name]):.1e}")


if __name__ == "__main__":
    main()
