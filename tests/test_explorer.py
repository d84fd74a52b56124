"""kit.viz.explorer: one output, live widget plus precomputed frames; bad declarations refused."""
import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from kit.viz import explorer as ex  # noqa: E402

CONTROLS = {"alpha": (0.0, 3.0, 0.5), "kind": ["a", "b", "c"]}
DEFAULTS = {"alpha": 1.0, "kind": "a", "fixed": 7}


def draw(alpha, kind, fixed):
    """A figure whose pixels depend on every argument, with a title above the axes that must not be cut."""
    figure, axis = plt.subplots(figsize=(2, 1.5))
    figure.suptitle("a title high up", y=1.05)
    axis.bar([0, 1, 2], [alpha, "abc".index(kind) + 1, fixed / 7])
    axis.set_ylim(0, 4)
    return figure


def frames_of(html_text: str) -> dict:
    return json.loads(re.search(r"<script type='application/json' class='kit-explorer-frames'>(.*?)</script>",
                                html_text).group(1))


def test_static_frames_cover_every_combination_and_start_at_the_defaults():
    values = ex._frame_values(CONTROLS, DEFAULTS, {"alpha": [0.5, 1.0, 2.0], "kind": ["a", "c"]})
    page = ex._static_html(draw, DEFAULTS, values)
    frames = frames_of(page)
    assert sorted(frames) == [f"{i},{j}" for i in range(3) for j in range(2)]
    assert len(set(frames.values())) == 6, "each combination of values must draw a different frame"
    assert f"src='{frames['1,0']}'" in page  # alpha=1.0 is position 1, kind='a' position 0
    assert "value='1'" in page and "data-labels='[&quot;0.5&quot;, &quot;1&quot;, &quot;2&quot;]'" in page
    import base64

    png = base64.b64decode(frames["1,0"].split(",", 1)[1])
    pixels = int.from_bytes(png[16:20], "big")  # cropped to what is drawn (titles kept), at twice the pixels
    assert "data-density='2'" in page and f"width='{round(pixels / 2)}'" in page
    assert 1.5 * plt.rcParams["figure.dpi"] < pixels / 2 <= 2 * plt.rcParams["figure.dpi"]  # a 2-in figure, cropped
    assert not plt.get_fignums(), "frames must not leave figures open for the page"


def test_a_control_left_out_of_frames_is_shown_fixed_at_its_default():
    values = ex._frame_values(CONTROLS, DEFAULTS, {"alpha": [1.0, 3.0]})
    assert values == {"alpha": [1.0, 3.0], "kind": ["a"]}
    page = ex._static_html(draw, DEFAULTS, values)
    assert "kind = a" in page and sorted(frames_of(page)) == ["0,0", "1,0"]


@pytest.mark.parametrize("frames, message", [
    ({"alpha": [0.5, 2.0]}, "must include its default"),
    ({"beta": [1.0]}, "not controls"),
    ({"alpha": [1.0, 9.0]}, "outside its range"),
    ({"kind": ["a", "z"]}, "not one of its options"),
    ({"alpha": [1.0, 1.0]}, "repeat"),
    ({}, "at least two frames"),
])
def test_bad_frame_declarations_are_refused(frames, message):
    with pytest.raises(ValueError, match=message):
        ex._frame_values(CONTROLS, DEFAULTS, frames)


def test_frames_over_the_budget_are_refused(monkeypatch):
    monkeypatch.setattr(ex, "FRAME_BUDGET_BYTES", 1000)
    with pytest.raises(ValueError, match="over its 0.0 MB budget"):
        ex._static_html(draw, DEFAULTS, ex._frame_values(CONTROLS, DEFAULTS, {"alpha": [1.0, 2.0]}))


def test_a_draw_that_shows_its_own_figure_is_refused():
    def shows(alpha, kind, fixed):
        plt.subplots()
        plt.subplots()

    with pytest.raises(ValueError, match="exactly one"):
        ex._render(shows, DEFAULTS)
    assert not plt.get_fignums()


def test_in_a_kernel_one_output_holds_the_live_widget_and_the_frames(monkeypatch):
    pytest.importorskip("ipywidgets")
    import IPython.display

    shown = []
    monkeypatch.setattr(ex, "in_live_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append((obj, raw)))
    assert ex.explorer(draw, CONTROLS, DEFAULTS, frames={"kind": ["a", "b"]}) is None
    assert len(shown) == 1 and shown[0][1] is True
    bundle = shown[0][0]
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert len(frames_of(bundle["text/html"])) == 2


def test_outside_a_kernel_only_the_defaults_are_drawn(monkeypatch):
    calls = []
    monkeypatch.setattr(ex, "in_live_kernel", lambda: False)
    monkeypatch.setattr(plt, "show", lambda: None)
    assert ex.explorer(lambda **v: calls.append(v) or draw(**v), CONTROLS, DEFAULTS, frames={"alpha": [1.0, 2.0]}) is None
    assert calls == [DEFAULTS]
    plt.close("all")


def test_without_declared_frames_the_first_control_is_stepped_through():
    assert ex._first_control_frames(CONTROLS, DEFAULTS) == {"alpha": [0.0, 1.0, 1.5, 3.0]}
    assert ex._first_control_frames({"kind": ["a", "b", "c", "d", "e"]}, {"kind": "c"}) == {"kind": ["a", "b", "c", "d"]}
    assert ex._first_control_frames({"n": (0, 9, 1)}, {"n": 9}) == {"n": [0, 4, 9]}
