import json
import shutil
from pathlib import Path

import nbformat
import pytest

from kit import paths
from kit.book import execute, pages, provenance

ROOT = paths.root()


def make_root(tmp_path: Path, with_notebook=True) -> Path:
    """A miniature repository: the book sources, the paper list, one kit module, one notebook."""
    (tmp_path / "book").mkdir()
    for name in ("_config.yml", "intro.md"):
        shutil.copy(ROOT / "book" / name, tmp_path / "book" / name)
    (tmp_path / "kit" / "det").mkdir(parents=True)
    shutil.copy(ROOT / "kit" / "papers.tsv", tmp_path / "kit" / "papers.tsv")
    (tmp_path / "kit" / "det" / "thing.py").write_text("X = 1\n")
    if with_notebook:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell("# P01 TOOD"), nbformat.v4.new_code_cell("print(1)")]
        nb.metadata["kit"] = {"profile": "cpu", "device": "CPU", "torch": "2", "executed_at": "today",
                              "wall_seconds": 3.0, "code_sha256": provenance.code_hash(nb),
                              "modules": provenance.modules_hashes(["kit.det.thing", "kit.book.pages"], tmp_path)}
        folder = tmp_path / "notebooks" / "dense-detection"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "p01_tood.ipynb")
    return tmp_path


def test_status_fresh_then_stale_on_code_module_and_profile(tmp_path):
    root = make_root(tmp_path)
    path = root / "notebooks" / "dense-detection" / "p01_tood.ipynb"
    nb = json.loads(path.read_text())
    assert set(nb["metadata"]["kit"]["modules"]) == {"kit.det.thing"}  # build tools are not hashed
    assert provenance.status(nb, "cpu", root).state == "fresh"
    assert provenance.status(nb, "smoke", root).state == "stale"
    assert provenance.status(nb, "gpu", root).needs_run
    nb["metadata"]["kit"]["profile"] = "gpu"
    assert provenance.status(nb, "cpu", root).state == "fresh"  # gpu outputs are preferred
    nb["cells"][1]["source"] = "print(2)"
    assert "its code cells changed" in provenance.status(nb, "gpu", root).reasons
    (root / "kit" / "det" / "thing.py").write_text("X = 2\n")
    assert "module kit.det.thing changed" in provenance.status(nb, "gpu", root).reasons
    del nb["metadata"]["kit"]
    assert provenance.status(nb, "cpu", root).state == "never"
    with pytest.raises(ValueError, match="profile"):
        provenance.status(nb, "laptop", root)


THING = '''"""A module."""
import math


def shown(x):
    """Shown on the page."""
    return math.sqrt(x)  # a comment


class Helper:
    def method(self):
        return 1
'''


def test_module_hash_follows_the_code_not_its_comments_or_docstrings():
    base = provenance.code_fingerprint(THING)
    cosmetic = THING.replace("# a comment", "# another comment").replace("Shown on the page.", "Reworded.")
    cosmetic = cosmetic.replace('"""A module."""', '"""A module,\n\nre-documented."""').replace("import math", "\nimport math")
    assert provenance.code_fingerprint(cosmetic) == base
    assert provenance.code_fingerprint(THING.replace("math.sqrt(x)", "math.sqrt(x + 0)")) != base
    assert provenance.code_fingerprint(THING.replace("return 1", "return 2")) != base
    # a function whose only statement is its docstring still differs from one that returns something
    assert provenance.code_fingerprint("def f():\n    'doc'\n") != provenance.code_fingerprint("def f():\n    return 0\n")


def test_a_page_goes_stale_when_the_source_it_shows_changes_and_only_then(tmp_path):
    root = make_root(tmp_path)
    module = root / "kit" / "det" / "thing.py"
    module.write_text(THING)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("show.source(thing.shown, thing.Helper.method)")]
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", {"text/markdown": "..."},
                                                  metadata={"kit_source": {"module": "kit.det.thing", "qualname": q}})
                           for q in ("shown", "Helper.method")]
    nb.metadata["kit"] = {"profile": "cpu", "code_sha256": provenance.code_hash(nb),
                          "modules": provenance.modules_hashes(["kit.det.thing"], root),
                          "shown": provenance.shown_hashes(nb, root)}
    assert set(nb.metadata["kit"]["shown"]) == {"kit.det.thing:shown", "kit.det.thing:Helper.method"}
    assert provenance.status(nb, "cpu", root).state == "fresh"
    module.write_text(THING.replace('"""A module."""', '"""A module, re-documented."""'))  # not shown: fresh
    assert provenance.status(nb, "cpu", root).state == "fresh"
    module.write_text(THING.replace("Shown on the page.", "Shown, reworded."))  # shown docstring: stale
    assert provenance.status(nb, "cpu", root).reasons == ["the source it shows, kit.det.thing.shown, changed"]
    module.write_text(THING.replace("class Helper", "class Renamed"))
    reasons = provenance.status(nb, "cpu", root).reasons
    assert "module kit.det.thing changed" in reasons
    assert "the source it shows, kit.det.thing.Helper.method, no longer exists" in reasons


def test_pages_build_chapters_toc_banner_and_scoreboard(tmp_path):
    root = make_root(tmp_path)
    (root / "results" / "cpu").mkdir(parents=True)
    (root / "results" / "cpu" / "P01.json").write_text(json.dumps({
        "paper": "P01", "profile": "cpu", "device": "CPU", "seeds": [0], "claim": "TOOD beats ATSS",
        "paper_numbers": {"AP": "42.4"}, "metrics": {"TOOD": {"AP": {"values": [0.3], "mean": 0.3, "std": 0.0}}},
        "headline": "AP", "verdict": "inconclusive", "wall_seconds": 100,
        "comparisons": [{"claim": "TOOD beats ATSS", "baseline": "ATSS", "method": "TOOD", "metric": "AP",
                         "direction": "higher", "margin": 0.01, "n_seeds": 3, "difference_mean": 0.004,
                         "interval_95": [-0.012, 0.02], "engaged": None, "verdict": "inconclusive"}]}))
    out = pages.build(root)
    chapter = (out / "chapters" / "dense-detection.md").read_text()
    assert "open the notebook" in chapter and "*not yet written*" in chapter
    assert "1 of" in chapter
    toc = (out / "_toc.yml").read_text()
    assert "notebooks/dense-detection/p01_tood" in toc and "chapters/attention" in toc
    shown = json.loads((out / "notebooks" / "dense-detection" / "p01_tood.ipynb").read_text())
    assert "Executed at the **cpu** profile" in shown["cells"][1]["source"]
    board = (out / "scoreboard.md").read_text()
    assert "TOOD beats ATSS" in board and "30.0 AP" in board and "(up to date)" in board
    assert "TOOD vs ATSS, AP: +0.4 [-1.2, +2.0] (n=3) → inconclusive" in board
    (root / "kit" / "det" / "thing.py").write_text("X = 3\n")
    out = pages.build(root)
    assert "(stale)" in (out / "scoreboard.md").read_text()
    assert "Stale" in json.loads((out / "notebooks" / "dense-detection" / "p01_tood.ipynb").read_text())["cells"][1]["source"]


def test_every_paper_has_a_known_chapter():
    papers = pages.read_papers()
    assert len(papers) == 45 and {p["id"] for p in papers} == {f"P{i:02d}" for i in range(1, 46)}


def test_execute_runs_a_notebook_and_records_provenance(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import kit.det.boxes\nimport os\nprint(os.environ['KIT_PROFILE'])"),
                nbformat.v4.new_code_cell("from kit import show\nshow.source(show.source_text)")]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    meta = execute.execute(path, "smoke", timeout=120)
    done = nbformat.read(path, as_version=4)
    assert len(done.cells) == 2 and done.cells[0].outputs[0]["text"].strip() == "smoke"
    assert meta["profile"] == "smoke" and "kit.det.boxes" in meta["modules"]
    assert not any(m.startswith("kit.book") for m in meta["modules"])
    assert list(meta["shown"]) == ["kit.show:source_text"]
    assert provenance.status(done, "smoke").state == "fresh"


def test_committed_notebooks_are_executed_and_fresh():
    """What `make book` would re-run on a fresh clone: nothing. (Also: each has results.)"""
    notebooks = execute.find_notebooks()
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        state = provenance.status(nb, "cpu")
        assert state.state == "fresh", f"{path.name} is {state.state}: {state.reasons} (run make book and commit)"
        paper = path.stem.split("_")[0].upper()
        ran_at = nb["metadata"]["kit"]["profile"]
        assert (ROOT / "results" / ran_at / f"{paper}.json").exists(), f"{paper} has no results record"


def test_book_loads_nothing_from_a_cdn():
    """MathJax and the widget scripts are vendored at set-up; the config must point at them."""
    import yaml

    config = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())["sphinx"]["config"]
    assert "://" not in config["mathjax_path"] and config["mathjax_path"].endswith("mathjax/tex-mml-chtml.js")
    assert config["html_extra_path"] == ["_vendor"]
    assert config["nb_ipywidgets_js"] == {} and all("://" not in js for js in config["html_js_files"])
    makefile = (ROOT / "Makefile").read_text()
    assert "book/_vendor/mathjax/tex-mml-chtml.js" in makefile and "book/_static/widgets/embed-amd.js" in makefile


def test_the_book_drops_sphinx_thebes_cdn_script():
    """Jupyter Book always loads sphinx_thebe; kit.book.offline removes its CDN declaration."""
    from kit.book.offline import _is_thebe

    class Script:
        def __init__(self, filename, **attributes):
            self.filename, self.attributes = filename, attributes

    inline = Script(None, body='const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"')
    assert _is_thebe(inline) and _is_thebe(Script("sphinx-thebe.js"))
    assert not _is_thebe(Script("widgets/embed-amd.js")) and not _is_thebe(Script(None, body="var x = 1"))
    config = (paths.root() / "book" / "_config.yml").read_text()
    assert "kit.book.offline" in config


def test_committed_cpu_records_follow_the_rule_over_three_seeds():
    """Issue 8's bar for every committed verdict: >= 3 paired seeds, comparisons the rule re-derives."""
    from kit import results

    records = [r for r in results.load_all() if r["profile"] == "cpu"]
    assert records, "no cpu records committed"
    for rec in records:
        assert len(rec["seeds"]) >= 3, f"{rec['paper']}: {len(rec['seeds'])} seeds; the cpu profile runs >= 3"
        assert rec["comparisons"], f"{rec['paper']}: no comparisons recorded"
        per_seed = {arm: {k: v["values"] for k, v in by.items()} for arm, by in rec["metrics"].items()}
        results.check_comparisons(rec["comparisons"], rec["verdict"], rec["seeds"], per_seed)
        assert all(c["n_seeds"] >= 3 for c in rec["comparisons"]), rec["paper"]


def test_page_checker_names_every_kind_of_fault(tmp_path):
    """kit.book.check_pages' verdict on one page, from DevTools events and the page's probe (no Chromium)."""
    from kit.book import check_pages

    book = tmp_path / "html"
    (book / "_static").mkdir(parents=True)
    inside = (book / "_static" / "a.js").as_uri()
    events = [
        {"method": "Network.requestWillBeSent", "params": {"requestId": "1", "request": {"url": inside}}},
        {"method": "Network.requestWillBeSent", "params": {"requestId": "2", "request": {"url": "https://cdn.x/y.js"}}},
        {"method": "Network.requestWillBeSent", "params": {"requestId": "3",
                                                           "request": {"url": (book / "font.woff2").as_uri()}}},
        {"method": "Network.loadingFailed", "params": {"requestId": "3", "errorText": "net::ERR_FILE_NOT_FOUND",
                                                       "type": "Font"}},
        {"method": "Runtime.exceptionThrown", "params": {"exceptionDetails": {
            "exception": {"description": "TypeError: MathJax.Hub is undefined\n at x"}}}},
        {"method": "Runtime.consoleAPICalled", "params": {"type": "error", "args": [{"value": "boom"}]}},
        {"method": "Runtime.consoleAPICalled", "params": {"type": "log", "args": [{"value": "fine"}]}},
    ]
    probe = {"wide": ["pre. (993 px)"], "shrunk": ["x.png (73 %)"], "explorers": 1, "frames": 0, "height": 100}
    faults = check_pages.faults_of(events, probe, book)
    assert faults == ["request outside the book: https://cdn.x/y.js",
                      "failed request: font.woff2 (net::ERR_FILE_NOT_FOUND, Font)",
                      "uncaught exception: TypeError: MathJax.Hub is undefined", "console error: boom",
                      "content wider than the column: pre. (993 px)", "image shrunk below 90 %: x.png (73 %)",
                      "explorer without static frames (1 explorer(s), 0 frame set(s))"]
    clean = {"wide": [], "shrunk": [], "explorers": 1, "frames": 1, "height": 100}
    assert check_pages.faults_of(events[:1], clean, book) == []


def test_the_book_folds_source_display_and_figure_code_but_not_the_rest():
    def code(source, outputs=(), tags=()):
        return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}, "outputs": list(outputs)}

    figure = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}
    explorer = {"output_type": "display_data", "data": {"text/html": "<div class='kit-explorer'>…</div>"}}
    printed = {"output_type": "stream", "name": "stdout", "text": "AP 0.31\n"}
    long_draw = "fig, ax = plt.subplots()\nax.plot(x)\nax.set_title('t')\nax.legend()\n"
    assert pages.folds_its_code(code("show.source(atss.atss_loss)"))
    assert pages.folds_its_code(code("show.source(a.f,\n            a.g)"))
    assert pages.folds_its_code(code(long_draw, [figure]))
    assert pages.folds_its_code(code(long_draw, [explorer]))
    assert not pages.folds_its_code(code("draw(0)", [figure]))  # a one-line call says what it draws
    assert not pages.folds_its_code(code(long_draw, [printed]))  # the experiment's code stays open
    assert not pages.folds_its_code(code(long_draw, [figure], tags=["show-input"]))
    assert not pages.folds_its_code({"cell_type": "markdown", "source": "show.source(x)", "metadata": {}})


NOTEBOOK_BUDGET_BYTES = 6_000_000  # an executed notebook, figures at 2x pixels and explorer frames included


def test_committed_notebooks_stay_within_their_size_budget():
    """Figures are PNGs at twice the layout pixels and explorers carry their frames; a page stays under 6 MB."""
    for path in execute.find_notebooks():
        size = path.stat().st_size
        assert size <= NOTEBOOK_BUDGET_BYTES, (f"{path.name} is {size / 1e6:.1f} MB, over the "
                                               f"{NOTEBOOK_BUDGET_BYTES / 1e6:.0f} MB budget: smaller figures or fewer frames")


def test_no_figure_text_is_set_below_the_styles_minimum():
    """Text under 9 pt is under 10 px on the book's screen: kit.viz and the notebooks never ask for it."""
    import re

    from kit.viz.style import MIN_TEXT_POINTS

    small = []
    sources = {str(p): p.read_text() for p in (ROOT / "kit" / "viz").glob("*.py")}
    for path in sorted((ROOT / "notebooks").glob("*/*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        sources[str(path)] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for name, text in sources.items():
        for match in re.finditer(r"\b(fontsize|labelsize|title_fontsize)\s*=\s*(\d+(?:\.\d+)?)", text):
            if float(match.group(2)) < MIN_TEXT_POINTS:
                small.append(f"{name}: {match.group(0)}")
    assert not small, f"figure text below {MIN_TEXT_POINTS} pt: {small}"
