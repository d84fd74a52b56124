"""The ``lvis`` package (0.5.3) as a reference, imported the way it can run here.

``import lvis`` imports ``lvis.vis``, which imports cv2 (OpenCV) at module level for drawing
only; the evaluator never touches it, so a stand-in module is installed when OpenCV is absent.
``LVISEval.accumulate`` uses ``np.float``, removed in numpy 1.24: it is set to ``float`` if missing.
"""
import json
import sys
import types
import warnings

import numpy as np

if "cv2" not in sys.modules:
    try:
        import cv2  # noqa: F401
    except ImportError:
        sys.modules["cv2"] = types.ModuleType("cv2")
if "float" not in np.__dict__:
    np.float = float

try:
    import lvis  # noqa: E402
except ImportError:  # the dev extra installs it; without it the reference tests skip
    lvis = None


def need_lvis():
    """The lvis package, or skip the calling test."""
    import pytest
    if lvis is None:
        pytest.skip("the lvis package (pip install lvis==0.5.3 --no-deps) is not installed")
    return lvis


def lvis_reference(lvis_gt: dict, results: list[dict], folder, max_dets: int = 300) -> dict:
    """lvis.LVISEval's bbox results (AP, AP50, AP75, APr, APc, APf; -1 mapped to NaN)."""
    need_lvis()
    path = folder / "gt.json"
    path.write_text(json.dumps(lvis_gt))
    gt = lvis.LVIS(str(path))
    with warnings.catch_warnings():  # lvis calls the deprecated Logger.warn
        warnings.simplefilter("ignore", DeprecationWarning)
        evaluator = lvis.LVISEval(gt, lvis.LVISResults(gt, [dict(r) for r in results], max_dets), "bbox")
    evaluator.run()
    return {k: (float("nan") if v == -1 else float(v)) for k, v in evaluator.results.items()}
