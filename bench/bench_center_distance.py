"""Time the kit's nuScenes centre-distance AP (P25) beside the devkit's and a loop-by-loop reference.

One class, the size of the P25 page's validation set: 300 samples, 4 ground-truth boxes each, 20
predictions per sample (the decoder's ``per_class``), most near a ground truth. Three ways to the same
AP at the four thresholds: ``kit.eval.center_distance.class_ap`` (NumPy, per-sample distance
matrices), a plain-Python transcription of the devkit's ``accumulate`` + ``calc_ap`` (below), and
``nuscenes-devkit``'s own functions when the devkit is installed (``pip install --no-deps
nuscenes-devkit pyquaternion``; its package imports need OpenCV and more, so its algorithm modules are
loaded with stand-ins for the packages on the way, as in ``tests/test_center_distance.py``). Prints
milliseconds per call and the largest difference of the APs. Runs in well under a minute.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections import defaultdict

import numpy as np

import kit
from kit.eval import center_distance as cd
from _timing import time_call  # bench/_timing.py, beside this script

SAMPLES, GT_PER_SAMPLE, PRED_PER_SAMPLE = 300, 4, 20


def make_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    gt_xy = rng.uniform(-30, 30, (SAMPLES * GT_PER_SAMPLE, 2))
    gt_sample = np.repeat(np.arange(SAMPLES), GT_PER_SAMPLE)
    near = rng.integers(0, GT_PER_SAMPLE, SAMPLES * PRED_PER_SAMPLE)  # which GT of its sample a prediction is near
    pred_sample = np.repeat(np.arange(SAMPLES), PRED_PER_SAMPLE)
    pred_xy = gt_xy[pred_sample * GT_PER_SAMPLE + near] + rng.normal(0, 1.5, (len(pred_sample), 2))
    return gt_xy, gt_sample, pred_xy, rng.random(len(pred_sample)), pred_sample


def reference_ap(gt_xy, gt_sample, pred_xy, score, pred_sample, threshold):
    """The devkit's rule in plain Python: sorted (score, index) pairs reversed, nearest untaken GT, dist < th."""
    by_sample = defaultdict(list)
    for g, s in enumerate(gt_sample):
        by_sample[s].append(g)
    taken, tp = set(), []
    for _, p in sorted(((v, i) for i, v in enumerate(score)))[::-1]:
        best, best_d = None, np.inf
        for g in by_sample[pred_sample[p]]:
            if g not in taken:
                d = float(np.hypot(*(gt_xy[g] - pred_xy[p])))
                if d < best_d:
                    best, best_d = g, d
        tp.append(best_d < threshold)
        if tp[-1]:
            taken.add(best)
    tp = np.array(tp)
    if not tp.any():
        return 0.0
    true_positives, false_positives = np.cumsum(tp), np.cumsum(~tp)
    precision = np.interp(np.linspace(0, 1, 101), true_positives / len(gt_xy),
                          true_positives / (true_positives + false_positives), right=0)
    return float(np.mean(np.clip(precision[11:] - 0.1, 0, None)) / 0.9)


def devkit():
    """(accumulate, calc_ap, EvalBoxes, DetectionBox, center_distance) or None without the devkit."""
    spec = importlib.util.find_spec("nuscenes")
    if spec is None or importlib.util.find_spec("pyquaternion") is None:
        return None
    root = spec.submodule_search_locations[0]
    for name, path in (("nuscenes", ""), ("nuscenes.utils", "/utils"), ("nuscenes.eval", "/eval"),
                       ("nuscenes.eval.common", "/eval/common"), ("nuscenes.eval.detection", "/eval/detection")):
        module = types.ModuleType(name)
        module.__path__ = [root + path]
        sys.modules[name] = module
    stub = types.ModuleType("nuscenes.utils.data_classes")
    stub.Box = object
    sys.modules["nuscenes.utils.data_classes"] = stub
    algo = importlib.import_module("nuscenes.eval.detection.algo")
    return (algo.accumulate, algo.calc_ap, importlib.import_module("nuscenes.eval.common.data_classes").EvalBoxes,
            importlib.import_module("nuscenes.eval.detection.data_classes").DetectionBox,
            importlib.import_module("nuscenes.eval.common.utils").center_distance)


def devkit_call(functions, case, threshold):
    accumulate, calc_ap, EvalBoxes, DetectionBox, center_distance = functions
    gt_xy, gt_sample, pred_xy, score, pred_sample = case
    gt, pred = EvalBoxes(), EvalBoxes()
    for s in range(SAMPLES):
        gt.add_boxes(str(s), [DetectionBox(sample_token=str(s), translation=(x, y, 1.0), size=(2.0, 4.0, 1.5),
                                           detection_name="car") for x, y in gt_xy[gt_sample == s]])
        pred.add_boxes(str(s), [DetectionBox(sample_token=str(s), translation=(x, y, 1.0), size=(2.0, 4.0, 1.5),
                                             detection_name="car", detection_score=float(c))
                                for (x, y), c in zip(pred_xy[pred_sample == s], score[pred_sample == s])])
    return lambda: calc_ap(accumulate(gt, pred, "car", center_distance, threshold), 0.1, 0.1)


def main():
    kit.setup()
    case = make_case()
    functions = devkit()
    print(f"centre-distance AP, one class: {SAMPLES} samples, {len(case[0])} GT, {len(case[3])} predictions")
    for threshold in cd.THRESHOLDS:
        ours = cd.class_ap(*case, threshold)
        ms_kit = 1000 * time_call(lambda: cd.class_ap(*case, threshold), repeats=3)
        ms_ref = 1000 * time_call(lambda: reference_ap(*case, threshold), repeats=1)
        line = (f"  th {threshold:3.1f} m: AP {100 * ours:5.1f}   kit {ms_kit:7.1f} ms   plain-Python reference "
                f"{ms_ref:7.1f} ms (|diff| {abs(ours - reference_ap(*case, threshold)):.1e})")
        if functions is not None:
            call = devkit_call(functions, case, threshold)
            ms_dev = 1000 * time_call(call, repeats=1)
            line += f"   devkit {ms_dev:7.1f} ms (|diff| {abs(ours - call()):.1e})"
        print(line)
    if functions is None:
        print("  (nuscenes-devkit not installed: pip install --no-deps nuscenes-devkit pyquaternion to time it too)")


if __name__ == "__main__":
    main()
