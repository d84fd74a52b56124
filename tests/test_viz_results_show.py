import json

import numpy as np

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from kit import experiment, results, show
from kit.det.priors import point_priors
from kit.viz import assign, boxes, curves, explorer, maps


def test_image_conversion_and_boxes(scenes):
    image = boxes.to_image(scenes.images[0])
    assert image.shape == (64, 64, 3) and 0 <= image.min() and image.max() <= 1
    with pytest.raises(ValueError, match="RGB"):
        boxes.to_image(torch.zeros(2, 5, 5))
    fig = boxes.show_examples(scenes, range(3), ncols=3)
    drawn = sum(len(ax.patches) for ax in fig.axes)
    assert drawn == sum(len(scenes.targets(i)[0]) for i in range(3))
    plt.close(fig)


def test_level_grid_and_assignment(scenes):
    fig = maps.level_grid({"score": [torch.rand(8, 8), torch.rand(4, 4), torch.rand(2, 2)]}, 64,
                          image=scenes.images[0], box=scenes.targets(0)[0][:1])
    assert len(fig.axes) == 3 + 1  # three levels and a colour bar
    plt.close(fig)
    priors = point_priors([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    assigned = torch.full((84,), -1)
    assigned[:3] = 0
    fig, ax = plt.subplots()
    assign.draw_assignment(ax, scenes.images[0], priors.points, priors.levels, assigned, scenes.targets(0)[0][:1])
    assign.level_legend(ax)
    assert len(ax.collections) == 2  # all priors, then the positives of the one level used
    assign.score_iou_scatter(ax, [0.1, 0.5], [0.2, 0.9], "x")
    plt.close(fig)


def test_training_curves():
    history = pd.DataFrame({"step": range(10), "loss": range(10)})
    fig = curves.training_curves({"a": history, "b": history * 2}, keys=["loss"], smooth=2, vlines={"warm-up": 4})
    a, b, warm_up = fig.axes[0].lines
    assert a.get_ydata().tolist() == [0.0] + [s - 0.5 for s in range(1, 10)]  # rolling mean of 2, the first alone
    assert b.get_xdata().tolist() == [2 * s for s in range(10)] and b.get_ydata().tolist()[1] == 1.0
    assert list(warm_up.get_xdata()) == [4, 4] and a.get_linestyle() == b.get_linestyle() == "-"
    assert a.get_color() != b.get_color()
    plt.close(fig)


def test_explorer_without_a_kernel_draws_the_static_figure():
    calls = []

    def draw(k, name):
        calls.append((k, name))
        plt.figure()

    assert explorer.explorer(draw, {"k": (1, 10, 1), "name": ["a", "b"]}, {"k": 3, "name": "b"}) is None
    assert calls == [(3, "b")]
    with pytest.raises(ValueError, match="default"):
        explorer.explorer(draw, {"k": (1, 10, 1)}, {})
    plt.close("all")


def test_explorer_widgets_respect_defaults_and_ranges():
    slider = explorer._widget("beta", (0.0, 10.0, 0.5), 6.0)
    assert slider.value == 6.0 and slider.max == 10.0
    assert type(explorer._widget("topk", (1, 30, 1), 13)).__name__ == "IntSlider"
    with pytest.raises(ValueError, match="outside"):
        explorer._widget("topk", (1, 30, 1), 40)
    with pytest.raises(ValueError, match="options"):
        explorer._widget("mode", ["a"], "b")


def test_results_record(tmp_path):
    claim = experiment.Claim("c", "ATSS", "TOOD", "AP")
    comparison = experiment.compare(claim, {0: 0.2, 1: 0.3}, {0: 0.25, 1: 0.35})
    path = results.record("P01", "cpu", "cpu", [0, 1], {"ATSS": {"AP": [0.2, 0.3]}, "TOOD": {"AP": [0.25, 0.35]}},
                          claim="c", paper_numbers={"AP": "1"}, verdict="reproduced", headline="AP",
                          wall_seconds=12.3, folder=tmp_path / "cpu", comparisons=[comparison])
    entry = json.loads(path.read_text())
    assert path.name == "P01.json" and entry["seeds"] == [0, 1]
    assert entry["metrics"]["TOOD"]["AP"]["mean"] == pytest.approx(0.3)
    assert entry["metrics"]["TOOD"]["AP"]["std"] == pytest.approx(0.0707, abs=1e-4)
    assert entry["versions"]["torch"] == torch.__version__ and entry["device"].startswith("CPU")
    assert results.load_all(tmp_path)[0]["paper"] == "P01"
    with pytest.raises(ValueError, match="verdict"):
        results.record("P01", "cpu", "cpu", [0], {"A": {"AP": [1]}}, "c", {}, "great", "AP", 1, folder=tmp_path)
    with pytest.raises(ValueError, match="seeds"):
        results.record("P01", "cpu", "cpu", [0, 1], {"A": {"AP": [1]}}, "c", {}, "reproduced", "AP", 1, folder=tmp_path)
    with pytest.raises(ValueError, match="P01"):
        results.record("tood", "cpu", "cpu", [0], {"A": {"AP": [1]}}, "c", {}, "reproduced", "AP", 1, folder=tmp_path)
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):  # a percentage where a fraction belongs
        results.record("P01", "cpu", "cpu", [0], {"A": {"AP": [45.7]}}, "c", {}, "reproduced", "AP", 1, folder=tmp_path)


def test_show_source():
    from kit.det.assigners import task_aligned_assign
    from kit.det.tood import TOODHead

    module, code = show.source_text(task_aligned_assign)
    assert module == "kit.det.assigners" and code.startswith("def task_aligned_assign(")
    module, code = show.source_text(TOODHead.forward)
    assert code.startswith("def forward(")  # dedented
    with pytest.raises(TypeError, match="cannot show"):
        show.source_text(3)


def test_verdict_figures_draw_the_measured_values():
    from kit.viz import verdict as viz_verdict

    claim = experiment.Claim("B beats A", "A", "B", "AP", margin=0.01)
    comparison = experiment.compare(claim, {0: 0.30, 1: 0.31, 2: 0.29}, {0: 0.34, 1: 0.36, 2: 0.33})
    fig = viz_verdict.paired_seeds([comparison], scale=100)
    lines = [line for line in fig.axes[0].lines if len(line.get_xdata()) == 2]
    assert len(lines) == 3 and lines[0].get_ydata().tolist() == pytest.approx([30.0, 34.0])
    plt.close(fig)
    history = pd.DataFrame({"step": range(4), "loss": [1.0] * 4, "eval/AP": [None, 0.1, None, 0.3]})
    fig = viz_verdict.over_training({"A": [history, history]}, "eval/AP", scale=100)
    assert fig.axes[0].lines[0].get_ydata().tolist() == pytest.approx([10.0, 30.0])
    plt.close(fig)
    with pytest.raises(ValueError, match="at least one"):
        viz_verdict.paired_seeds([])


@pytest.mark.parametrize("baseline, method", [("dense, smaller input", "sparse λ=0.2"),
                                              ("fixed k = 13", "dynamic k ∈ K*"),
                                              ("ATSS (the paper's baseline)", "TOOD with task alignment"),
                                              ("Deformable (single-scale)", "Deformable DETR")])
def test_paired_seeds_tick_labels_do_not_overlap(baseline, method):
    from kit.viz import verdict as viz_verdict

    claim = experiment.Claim("a claim", baseline, method, "AP", margin=0.01)
    comparison = experiment.compare(claim, {0: 0.30, 1: 0.31, 2: 0.29}, {0: 0.34, 1: 0.36, 2: 0.33})
    fig = viz_verdict.paired_seeds([comparison, comparison], scale=100)
    fig.canvas.draw()
    for ax in fig.axes[:2]:  # the two panels (their twin axes come after them)
        left, right = (text.get_window_extent() for text in ax.texts if text.get_gid() == "arm-label")
        assert not left.overlaps(right), f"{baseline!r} and {method!r} overlap under their panel"
    plt.close(fig)


def test_erf_background_is_a_dimmed_grey_whatever_the_image():
    from kit.viz.erf import dimmed_grey, draw_erf

    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3))
    grey = dimmed_grey(image)
    assert grey.shape == (16, 16) and grey.min() >= 0.25 and grey.max() <= 0.6
    assert dimmed_grey(np.ones((2, 2, 3))) == pytest.approx(np.full((2, 2), 0.6))
    fig, ax = plt.subplots()
    draw_erf(ax, rng.random((16, 16)), image=torch.from_numpy(image).permute(2, 0, 1).float())
    background = ax.images[0].get_array()
    assert background.ndim == 2 and background.max() <= 0.6  # grey, not the RGB texture
    plt.close(fig)


def test_show_image_puts_pixel_i_on_the_box_coordinates_i_to_i_plus_1():
    fig, ax = plt.subplots()
    boxes.show_image(ax, torch.zeros(3, 6, 10))
    assert ax.images[0].get_extent() == [0, 10, 6, 0]
    assert tuple(ax.get_xlim()) == (0, 10) and tuple(ax.get_ylim()) == (6, 0)
    plt.close(fig)


def test_training_curves_of_arm_seed_pairs_colour_the_arm_and_style_the_seed():
    history = pd.DataFrame({"step": range(6), "loss": [3.0, 2.0, 1.5, 1.2, 1.0, 0.9]})
    runs = {(arm, seed): history for seed in (0, 1, 2) for arm in ("A", "B", "C", "D", "E", "F")}
    fig = curves.training_curves(runs, keys=["loss"], smooth=1)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert lines["('A', 0)"].get_color() == lines["('A', 2)"].get_color() != lines["('B', 0)"].get_color()
    assert lines["('A', 0)"].get_linestyle() != lines["('A', 1)"].get_linestyle()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert fig.axes[0].get_legend() is None  # under the panels, not over the curves
    assert labels == ["A", "B", "C", "D", "E", "F", "seed 0", "seed 1", "seed 2"]  # each colour named once
    plt.close(fig)
    with pytest.raises(ValueError, match="at most"):
        curves.training_curves({("A", s): history for s in range(5)}, keys=["loss"])
