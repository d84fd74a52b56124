"""The book's layout and console glue (book/_static, book/_config.yml, the Makefile) and the
scoreboard's grouping: what a fresh clone's `make book` must wire up (no browser needed)."""
import yaml

from kit import paths
from kit.book import pages

ROOT = paths.root()


def test_the_glue_script_loads_between_require_and_the_widget_bundle():
    """kit-book.js maps the bundle's modules to _static/widgets (fonts) and gives MathJax 3 a Hub."""
    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())["sphinx"]["config"]
    scripts = config["html_js_files"]
    assert scripts.index("widgets/require.js") < scripts.index("kit-book.js") < scripts.index("widgets/embed-amd.js")
    assert config["html_context"]["default_mode"] in {"auto", "light", "dark"}  # unset: "invalid theme mode"
    script = (ROOT / "book" / "_static" / "kit-book.js").read_text()
    assert '"@jupyter-widgets": here + "widgets"' in script and "mathjax.Hub = {" in script
    assert (ROOT / "book" / "_static" / "kit-book.css").is_file()


def test_make_book_vendors_the_widget_fonts():
    makefile = (ROOT / "Makefile").read_text()
    book_rule = next(line for line in makefile.splitlines() if line.startswith("book:"))
    assert "$(WIDGET_FONTS)" in book_rule and "*.woff2" in makefile


def test_the_scoreboard_is_grouped_by_chapter_in_book_order(tmp_path):
    def record(paper, verdict):
        return {"paper": paper, "profile": "cpu", "device": "CPU", "seeds": [0, 1, 2], "claim": f"{paper} wins",
                "paper_numbers": {"AP": "40"}, "headline": "AP", "verdict": verdict, "wall_seconds": 10,
                "metrics": {"m": {"AP": {"values": [0.1, 0.2, 0.3], "mean": 0.2, "std": 0.1}}}}

    board = pages.scoreboard_page([record("P30", "inconclusive"), record("P01", "reproduced")],
                                  pages.read_papers(), tmp_path)
    lines = board.splitlines()
    dense, attention = lines.index("## Dense detection and label assignment"), lines.index(
        "## Deformable convolution and attention")
    p01 = next(i for i, line in enumerate(lines) if line.startswith("| **P01**"))
    p30 = next(i for i, line in enumerate(lines) if line.startswith("| **P30**"))
    assert dense < p01 < attention < p30 and lines.count("| --- | --- | --- | --- | --- | --- |") == 2
    assert '<div class="kit-full-width"></div>' in lines  # the page asks for the full width
