"""Bad input to the BEV pieces of P25 (kit.data.bev_scenes, kit.data.cbgs, kit.det.bev_detector,
kit.det.grouped_heads, kit.det.center_heatmap, kit.eval.center_distance): each row a call that must be
refused, with the exception type and a phrase of its message. Empty inputs that are legitimate are
checked at the end."""
import numpy as np
import pytest
import torch

from kit.data.bev_scenes import BEVSceneConfig, box_corners, generate
from kit.data.cbgs import class_balanced_indices, draws_per_class
from kit.det.bev_detector import BEVDetector, BEVGrid, PillarEncoder
from kit.det.center_heatmap import center_targets, decode, grouped_loss
from kit.det.grouped_heads import CBGS_GROUPS, GroupedHeads, check_groups, global_labels
from kit.eval import center_distance as cd

GRID = BEVGrid(16.0, 8)
SCENES = generate(BEVSceneConfig(3, extent=16.0, seed=1), use_cache=False)
PRESENCE = torch.tensor([[True, False], [True, True]])
POINTS = torch.zeros(5, 4)
BATCH = torch.zeros(5, dtype=torch.long)
BOXES = torch.tensor([[[0.0, 0.0, 2.0, 4.0, 0.0]]])
LABELS = torch.tensor([[0]])
HEAT = torch.zeros(1, 10, 8, 8)
BOX_MAPS = torch.zeros(1, 6, 6, 8, 8)
XY = np.zeros((2, 2))
GT = {"xy": XY, "label": np.array([0, 1]), "sample": np.array([0, 0])}
PRED = {"xy": XY, "score": np.array([0.5, 0.4]), "label": np.array([0, 1]), "sample": np.array([0, 0])}

BAD = [
    # kit.data.bev_scenes
    ("scenes: zero scenes", lambda: BEVSceneConfig(0), ValueError, r"num_scenes must be an int >= 1"),
    ("scenes: NaN extent", lambda: BEVSceneConfig(2, extent=float("nan")), ValueError, r"must be finite"),
    ("scenes: tiny extent", lambda: BEVSceneConfig(2, extent=4.0), ValueError, r"extent must be >= 8 metres"),
    ("scenes: zero density", lambda: BEVSceneConfig(2, density=0.0), ValueError, r"density must be > 0"),
    ("scenes: zero min_points", lambda: BEVSceneConfig(2, min_points=0), ValueError, r"min_points must be an int >= 1"),
    ("scenes: negative seed", lambda: BEVSceneConfig(2, seed=-1), ValueError, r"seed must be an int >= 0"),
    ("scenes: not a config", lambda: generate({"num_scenes": 2}), TypeError, r"config must be a BEVSceneConfig"),
    ("scenes: scene index out of range", lambda: SCENES.scene_points(3), IndexError, r"scene index must be an int in \[0, 3\)"),
    ("scenes: float batch indices", lambda: SCENES.batch(torch.tensor([0.0])), ValueError, r"1-D sequence of int scene ids"),
    ("scenes: empty batch", lambda: SCENES.batch([]), ValueError, r"at least one scene index"),
    ("scenes: batch index out of range", lambda: SCENES.batch([0, 5]), IndexError, r"scene indices must be in \[0, 3\)"),
    ("scenes: box of zero width", lambda: box_corners(0, 0, 0.0, 4, 0), ValueError, r"width, length > 0"),
    ("scenes: NaN yaw", lambda: box_corners(0, 0, 2, 4, float("nan")), ValueError, r"finite x, y, yaw"),
    # kit.data.cbgs
    ("ds: float presence", lambda: class_balanced_indices(PRESENCE.float(), 0), TypeError, r"presence must be bool"),
    ("ds: 1-D presence", lambda: class_balanced_indices(PRESENCE[0], 0), ValueError, r"presence must be \(N, C\)"),
    ("ds: no samples", lambda: draws_per_class(torch.zeros(0, 3, dtype=torch.bool)), ValueError, r"N >= 1 samples"),
    ("ds: a list", lambda: draws_per_class([[True]]), TypeError, r"presence must be a torch.Tensor"),
    ("ds: negative seed", lambda: class_balanced_indices(PRESENCE, -1), ValueError, r"seed must be an int >= 0"),
    ("ds: bool seed", lambda: class_balanced_indices(PRESENCE, True), ValueError, r"seed must be an int >= 0"),
    # kit.det.grouped_heads
    ("groups: a class twice", lambda: check_groups(((0, 1), (1, 2)), 3), ValueError, r"partition the classes 0..2"),
    ("groups: a class missing", lambda: check_groups(((0,), (2,)), 3), ValueError, r"partition the classes"),
    ("groups: an empty group", lambda: check_groups(((0, 1, 2), ()), 3), ValueError, r"non-empty tuples"),
    ("groups: float class id", lambda: check_groups(((0.0, 1),), 2), TypeError, r"class ids in groups must be ints"),
    ("groups: zero classes", lambda: check_groups(((0,),), 0), ValueError, r"num_classes must be an int >= 1"),
    ("groups: labels of non-partition", lambda: global_labels(((0, 2),)), ValueError, r"partition the classes 0..1"),
    ("heads: groups of another class count", lambda: GroupedHeads(8, 10, ((0, 1),)), ValueError, r"partition"),
    ("heads: features of another width", lambda: GroupedHeads(8, 2)(torch.zeros(1, 4, 3, 3)), ValueError,
     r"features must be \(B, 8, H, W\)"),
    # kit.det.bev_detector
    ("grid: cells not divisible by 4", lambda: BEVGrid(16.0, 30), ValueError, r"divisible by 4"),
    ("grid: NaN extent", lambda: BEVGrid(float("nan"), 8), ValueError, r"extent must be a finite number"),
    ("pillars: points with 3 columns", lambda: PillarEncoder(GRID)(torch.zeros(5, 3), BATCH, 1), ValueError,
     r"points must be a \(P, 4\) tensor"),
    ("pillars: integer points", lambda: PillarEncoder(GRID)(torch.zeros(5, 4, dtype=torch.long), BATCH, 1), TypeError,
     r"points must be float"),
    ("pillars: NaN point", lambda: PillarEncoder(GRID)(torch.full((5, 4), float("nan")), BATCH, 1), ValueError,
     r"points must be finite"),
    ("pillars: batch index beyond the batch", lambda: PillarEncoder(GRID)(POINTS, BATCH + 1, 1), ValueError,
     r"batch_index must be in \[0, 1\)"),
    ("pillars: float batch index", lambda: PillarEncoder(GRID)(POINTS, BATCH.float(), 1), ValueError,
     r"batch_index must be \(P,\) long"),
    ("detector: bad groups", lambda: BEVDetector(GRID, 3, ((0, 1),)), ValueError, r"partition the classes 0..2"),
    # kit.det.center_heatmap
    ("targets: boxes with 4 numbers", lambda: center_targets(BOXES[..., :4], LABELS, GRID, 10), ValueError,
     r"boxes must be \(B, M, 5\)"),
    ("targets: integer boxes", lambda: center_targets(BOXES.long(), LABELS, GRID, 10), TypeError, r"boxes must be float"),
    ("targets: float labels", lambda: center_targets(BOXES, LABELS.float(), GRID, 10), ValueError,
     r"labels must be \(B, M\) long"),
    ("targets: label beyond the classes", lambda: center_targets(BOXES, LABELS + 10, GRID, 10), ValueError,
     r"class ids in \[0, 10\) or -1"),
    ("targets: NaN box", lambda: center_targets(torch.full_like(BOXES, float("nan")), LABELS, GRID, 10), ValueError,
     r"boxes must be finite"),
    ("targets: zero length", lambda: center_targets(BOXES * torch.tensor([1, 1, 1, 0, 1.0]), LABELS, GRID, 10),
     ValueError, r"width and length > 0"),
    ("targets: zero classes", lambda: center_targets(BOXES, LABELS, GRID, 0), ValueError, r"num_classes must be an int"),
    ("loss: box maps of 2 tasks for 6", lambda: grouped_loss(HEAT, BOX_MAPS[:, :2], center_targets(BOXES, LABELS, GRID, 10),
                                                            CBGS_GROUPS), ValueError, r"box_maps must be \(B, G, 6, H, W\)"),
    ("decode: zero peaks per class", lambda: decode(HEAT, BOX_MAPS, CBGS_GROUPS, GRID, per_class=0), ValueError,
     r"per_class must be an int >= 1"),
    ("decode: min_score above 1", lambda: decode(HEAT, BOX_MAPS, CBGS_GROUPS, GRID, min_score=1.5), ValueError,
     r"min_score must be in \[0, 1\]"),
    ("decode: 3-D heatmap", lambda: decode(HEAT[0], BOX_MAPS, CBGS_GROUPS, GRID), ValueError,
     r"heat_logits must be \(B, C, H, W\)"),
    # kit.eval.center_distance
    ("ap: xy with 3 columns", lambda: cd.class_ap(np.zeros((2, 3)), [0, 0], XY, [1, 1], [0, 0], 1.0), ValueError,
     r"gt_xy must be \(n, 2\)"),
    ("ap: NaN score", lambda: cd.class_ap(XY, [0, 0], XY, [np.nan, 1], [0, 0], 1.0), ValueError, r"pred_score must be finite"),
    ("ap: inf position", lambda: cd.class_ap(XY, [0, 0], XY + np.inf, [1, 1], [0, 0], 1.0), ValueError,
     r"pred_xy must be finite"),
    ("ap: float sample ids", lambda: cd.class_ap(XY, [0.5, 0], XY, [1, 1], [0, 0], 1.0), TypeError,
     r"gt_sample must be integers"),
    ("ap: scores of another length", lambda: cd.class_ap(XY, [0, 0], XY, [1], [0, 0], 1.0), ValueError,
     r"one entry per prediction"),
    ("ap: gt samples of another length", lambda: cd.class_ap(XY, [0], XY, [1, 1], [0, 0], 1.0), ValueError,
     r"gt_sample has 1 entries, gt_xy 2"),
    ("ap: zero threshold", lambda: cd.class_ap(XY, [0, 0], XY, [1, 1], [0, 0], 0.0), ValueError,
     r"threshold must be a finite distance > 0"),
    ("ap: string scores", lambda: cd.class_ap(XY, [0, 0], XY, ["a", "b"], [0, 0], 1.0), TypeError,
     r"pred_score must be numbers"),
    ("ap: min_recall of 1", lambda: cd.average_precision(np.zeros(101), min_recall=1.0), ValueError,
     r"min_recall and min_precision must be in \[0, 1\)"),
    ("ap: a curve of 100 points", lambda: cd.average_precision(np.zeros(100)), ValueError, r"finite \(101,\) curve"),
    ("ap: int tp flags", lambda: cd.precision_at_recalls(np.array([1, 0]), 2), TypeError, r"tp must be a 1-D bool array"),
    ("ap: more TPs than GT", lambda: cd.precision_at_recalls(np.array([True, True]), 1), ValueError,
     r"num_gt must be an int >= the number of true positives"),
    ("map: missing key", lambda: cd.mean_ap({"xy": XY, "label": [0, 1]}, PRED, 2), ValueError, r"gt must be a dict with keys"),
    ("map: label beyond the classes", lambda: cd.mean_ap(GT, {**PRED, "label": np.array([0, 5])}, 2), ValueError,
     r"predictions labels must be in \[0, 2\)"),
    ("map: zero classes", lambda: cd.mean_ap(GT, PRED, 0), ValueError, r"num_classes must be an int >= 1"),
]


@pytest.mark.parametrize("call, error, message", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_empty_inputs_are_legitimate():
    assert len(class_balanced_indices(torch.zeros(4, 3, dtype=torch.bool), 0)) == 0  # no class present: no draws
    bev = PillarEncoder(GRID)(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2)  # no points: empty pillars
    assert bev.shape == (2, 25, 8, 8) and float(bev.abs().sum()) == 0
    targets = center_targets(torch.zeros(2, 0, 5), torch.zeros(2, 0, dtype=torch.long), GRID, 10)  # no boxes
    assert float(targets["heat"].sum()) == 0 and len(targets["label"]) == 0
    losses = grouped_loss(torch.zeros(2, 10, 8, 8), torch.zeros(2, 6, 6, 8, 8), targets, CBGS_GROUPS)
    assert all(bool(torch.isfinite(v.detach())) for v in losses.values())
    detections = decode(torch.full((1, 10, 8, 8), -20.0), BOX_MAPS, CBGS_GROUPS, GRID)  # nothing above min_score
    assert len(detections[0]["score"]) == 0
    empty = {"xy": np.zeros((0, 2)), "label": np.zeros(0, int), "sample": np.zeros(0, int)}
    assert cd.mean_ap(empty, {**empty, "score": np.zeros(0)}, 3)["mAP"] == 0.0  # no GT, no predictions: AP 0
    assert len(SCENES.subset([])) == 0
