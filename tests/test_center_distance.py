"""kit.eval.center_distance: nuScenes' centre-distance AP, against a brute-force transcription of the
devkit's rule and, where ``nuscenes-devkit`` is installed, against its ``accumulate`` / ``calc_ap``."""
import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest

from kit.eval import center_distance as cd


def brute_force_ap(gt_xy, gt_sample, pred_xy, pred_score, pred_sample, threshold, min_recall=0.1, min_precision=0.1):
    """The devkit's accumulate + calc_ap rule, written out loop by loop (one class)."""
    npos = len(gt_xy)
    if npos == 0 or len(pred_score) == 0:
        return 0.0
    order = [i for (_, i) in sorted((v, i) for (i, v) in enumerate(pred_score))][::-1]
    taken, tp, fp = set(), [], []
    for p in order:
        best, best_d = None, np.inf
        for g in range(npos):
            if gt_sample[g] == pred_sample[p] and g not in taken:
                d = float(np.linalg.norm(np.asarray(gt_xy[g]) - np.asarray(pred_xy[p])))
                if d < best_d:
                    best, best_d = g, d
        if best_d < threshold:
            taken.add(best)
            tp.append(1), fp.append(0)
        else:
            tp.append(0), fp.append(1)
    if not any(tp):
        return 0.0
    tp, fp = np.cumsum(tp).astype(float), np.cumsum(fp).astype(float)
    prec, rec = tp / (fp + tp), tp / npos
    prec = np.interp(np.linspace(0, 1, 101), rec, prec, right=0)
    prec = prec[round(100 * min_recall) + 1:] - min_precision
    prec[prec < 0] = 0
    return float(np.mean(prec)) / (1.0 - min_precision)


def random_case(seed, samples=6, gts=15, preds=25, ties=False):
    rng = np.random.default_rng(seed)
    gt_xy = rng.uniform(-20, 20, (gts, 2))
    gt_sample = rng.integers(0, samples, gts)
    near = rng.integers(0, gts, preds)
    pred_xy = gt_xy[near] + rng.normal(0, rng.uniform(0.2, 3.0), (preds, 2))
    pred_sample = np.where(rng.random(preds) < 0.8, gt_sample[near], rng.integers(0, samples, preds))
    score = rng.integers(0, 5, preds) / 5.0 if ties else rng.random(preds)
    return gt_xy, gt_sample, pred_xy, score, pred_sample


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("threshold", cd.THRESHOLDS)
def test_matches_brute_force(seed, threshold):
    case = random_case(seed, ties=seed % 3 == 0)
    assert cd.class_ap(*case, threshold) == pytest.approx(brute_force_ap(*case, threshold), abs=1e-12)


def test_perfect_and_strict_threshold():
    xy = np.array([[0.0, 0.0], [5.0, 5.0]])
    assert cd.class_ap(xy, [0, 1], xy, [0.5, 0.4], [0, 1], 0.5) == pytest.approx(1.0)
    assert cd.class_ap(xy[:1], [0], xy[:1] + [2.0, 0.0], [1.0], [0], 2.0) == 0.0  # distance == threshold: no match
    assert cd.class_ap(xy[:1], [0], xy[:1] + [1.999, 0.0], [1.0], [0], 2.0) == pytest.approx(1.0)


def test_other_sample_never_matches():
    xy = np.array([[0.0, 0.0]])
    assert cd.class_ap(xy, [0], xy, [1.0], [1], 4.0) == 0.0


def test_empty_inputs_give_zero():
    assert cd.class_ap(np.zeros((0, 2)), [], np.ones((2, 2)), [1, 1], [0, 0], 1.0) == 0.0
    assert cd.class_ap(np.ones((2, 2)), [0, 0], np.zeros((0, 2)), [], [], 1.0) == 0.0


def test_mean_ap_per_class_and_no_gt_class():
    gt = {"xy": np.array([[0.0, 0.0], [3.0, 3.0]]), "label": np.array([0, 1]), "sample": np.array([0, 0])}
    pred = {"xy": gt["xy"].copy(), "score": np.array([0.9, 0.8]), "label": np.array([0, 1]), "sample": np.array([0, 0])}
    out = cd.mean_ap(gt, pred, 3)
    assert out["per_class"].tolist() == pytest.approx([1.0, 1.0, 0.0])  # class 2 has no GT: AP 0
    assert out["mAP"] == pytest.approx(2 / 3)
    assert out["per_class_threshold"].shape == (3, 4)


def load_devkit_algo():
    """``nuscenes.eval.detection.algo`` without the devkit's package imports (which pull in OpenCV,
    matplotlib, sklearn, ...): the packages on the way are stood in by empty modules and the one
    heavy module the algorithm does not need (``nuscenes.utils.data_classes``) by a stub."""
    spec = importlib.util.find_spec("nuscenes")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nuscenes-devkit is not installed (pip install --no-deps nuscenes-devkit pyquaternion)")
    if importlib.util.find_spec("pyquaternion") is None:
        pytest.skip("pyquaternion (a dependency of the devkit's eval code) is not installed")
    root = spec.submodule_search_locations[0]
    saved = {k: v for k, v in sys.modules.items() if k == "nuscenes" or k.startswith("nuscenes.")}
    for name, path in (("nuscenes", ""), ("nuscenes.utils", "/utils"), ("nuscenes.eval", "/eval"),
                       ("nuscenes.eval.common", "/eval/common"), ("nuscenes.eval.detection", "/eval/detection")):
        module = types.ModuleType(name)
        module.__path__ = [root + path]
        sys.modules[name] = module
    stub = types.ModuleType("nuscenes.utils.data_classes")
    stub.Box = object
    sys.modules["nuscenes.utils.data_classes"] = stub
    try:
        algo = importlib.import_module("nuscenes.eval.detection.algo")
        data_classes = importlib.import_module("nuscenes.eval.common.data_classes")
        detection = importlib.import_module("nuscenes.eval.detection.data_classes")
        utils = importlib.import_module("nuscenes.eval.common.utils")
    finally:
        for k in [k for k in sys.modules if k == "nuscenes" or k.startswith("nuscenes.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return algo, data_classes.EvalBoxes, detection.DetectionBox, utils.center_distance


def devkit_ap(case, threshold):
    algo, EvalBoxes, DetectionBox, center_distance = load_devkit_algo()
    gt_xy, gt_sample, pred_xy, score, pred_sample = case
    gt, pred = EvalBoxes(), EvalBoxes()
    tokens = [f"s{i}" for i in range(int(max(gt_sample.max(), pred_sample.max())) + 1)]
    for token in tokens:
        gt.add_boxes(token, [])
        pred.add_boxes(token, [])
    for xy, s in zip(gt_xy, gt_sample):
        gt.boxes[tokens[s]].append(DetectionBox(sample_token=tokens[s], translation=(xy[0], xy[1], 1.0), size=(2.0, 4.0, 1.5),
                                                detection_name="car", attribute_name="vehicle.parked"))
    for xy, s, c in zip(pred_xy, pred_sample, score):
        pred.boxes[tokens[s]].append(DetectionBox(sample_token=tokens[s], translation=(xy[0], xy[1], 1.0), size=(2.0, 4.0, 1.5),
                                                  detection_name="car", detection_score=float(c),
                                                  attribute_name="vehicle.parked"))
    data = algo.accumulate(gt, pred, "car", center_distance, threshold)
    return algo.calc_ap(data, 0.1, 0.1)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", cd.THRESHOLDS)
def test_matches_nuscenes_devkit(seed, threshold):
    gt_xy, gt_sample, pred_xy, score, pred_sample = random_case(100 + seed, ties=seed % 2 == 0)
    by_sample = np.argsort(pred_sample, kind="stable")  # the devkit's prediction order: sample by sample
    case = gt_xy, gt_sample, pred_xy[by_sample], score[by_sample], pred_sample[by_sample]
    assert cd.class_ap(*case, threshold) == pytest.approx(devkit_ap(case, threshold), abs=1e-9)
