"""Generate the book's source tree under ``book/_generated/`` from what is in the repository.

    python -m kit.book.pages

* the hand-written pages and config in ``book/`` are copied;
* one page per chapter lists that chapter's papers (from ``kit/papers.tsv``), linking the
  ones that have a notebook and marking the others as not yet written;
* every notebook in ``notebooks/<chapter>/`` is copied with a banner cell saying at which
  profile, on which device and when it was executed, and whether it is stale;
* the scoreboard page is built from ``results/<profile>/*.json``;
* ``_toc.yml`` ties them together.

Nothing is executed here: the book is rendered from the notebooks' stored outputs.
"""
from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

from kit import paths
from kit.book import provenance

CHAPTERS = {  # chapter id -> (title, one-line description), in book order
    "dense-detection": ("Dense detection and label assignment",
                        "One-stage detectors and the rules that decide which locations learn which object."),
    "attention": ("Deformable convolution and attention",
                  "Where a network looks: deformable sampling, deformable kernels, attention."),
    "two-stage": ("Two-stage detectors", "Region proposals, light heads and detection backbones."),
    "long-tail": ("Long-tailed recognition", "Learning rare classes next to frequent ones."),
    "segmentation": ("Segmentation", "Dense labelling: routing, filtering and searched losses."),
    "nas": ("Architecture search", "Searching cells, stages and sub-networks."),
    "video": ("Video", "Temporal modelling and video object detection."),
    "vision-language": ("Vision and language", "Joint image-text and video-sentence representations."),
    "retrieval": ("Set retrieval", "Embedding sets of faces for retrieval and recognition."),
    "training": ("Training methods", "Normalisation, low-precision training, contrastive rules, adaptation."),
    "systems": ("Systems", "Compilers and large-scale training."),
}


def read_papers(path: Path | None = None) -> list[dict]:
    """The paper list (id, arxiv, short, title_or_topic, seed_file, chapter)."""
    path = Path(path) if path is not None else paths.root() / "kit" / "papers.tsv"
    with path.open(newline="") as handle:
        papers = list(csv.DictReader(handle, delimiter="\t"))
    unknown = sorted({p["chapter"] for p in papers} - set(CHAPTERS))
    if unknown:
        raise ValueError(f"papers.tsv names chapters the book does not know: {unknown}")
    return papers


def notebook_for(paper: dict, root: Path) -> Path | None:
    """``notebooks/<chapter>/<id>_<short>.ipynb`` (id lower-case), if it exists."""
    path = root / "notebooks" / paper["chapter"] / f"{paper['id'].lower()}_{paper['short'].replace('-', '_')}.ipynb"
    return path if path.exists() else None


def banner(notebook: dict, root: Path | None = None) -> str:
    """The Markdown banner put under a notebook's title in the book."""
    meta = notebook.get("metadata", {}).get("kit")
    if not meta:
        return "```{warning}\nThis page has never been executed by the kit; it shows no results.\n```"
    state = provenance.status(notebook, meta["profile"], root)
    text = (f"Executed at the **{meta['profile']}** profile on {meta['device']}, {meta['executed_at']}, "
            f"in {meta['wall_seconds']:.0f} s (torch {meta['torch']}).")
    if meta["profile"] != "gpu":
        text += " The gpu profile (`make study`) runs the study at full scale with more seeds."
    if state.needs_run:
        return f"```{{warning}}\n{text} **Stale:** {'; '.join(state.reasons)}; run `make book` to refresh it.\n```"
    return f"```{{note}}\n{text}\n```"


def _joined(text) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def folds_its_code(cell: dict) -> bool:
    """Whether the book folds a code cell's source (one click opens it): the story first.

    Folded: a cell that only displays kit source (``show.source``: the folded source is its
    output), and a cell of more than three lines whose output is a figure or an explorer, where
    the prose around it carries the point. The notebook itself is unchanged; a cell tagged
    ``show-input`` is never folded.
    """
    if cell.get("cell_type") != "code" or "show-input" in cell.get("metadata", {}).get("tags", []):
        return False
    code = [line for line in _joined(cell.get("source", "")).splitlines() if line.strip()]
    # show.source(...) calls, possibly continued over lines
    if code and all(line.lstrip().startswith("show.source(") or line.startswith((" ", ")")) for line in code):
        return True
    draws = any("image/png" in output.get("data", {})
                or "kit-explorer" in _joined(output.get("data", {}).get("text/html", ""))
                for output in cell.get("outputs", []))
    return draws and len(code) > 3


def copy_notebook(source: Path, target: Path, root: Path | None = None) -> None:
    notebook = json.loads(source.read_text())
    shown = copy.deepcopy(notebook)
    for cell in shown["cells"]:
        if folds_its_code(cell):
            tags = cell.setdefault("metadata", {}).setdefault("tags", [])
            if "hide-input" not in tags:
                tags.append("hide-input")
    cell = {"cell_type": "markdown", "id": "kit-provenance-banner", "metadata": {}, "source": banner(notebook, root)}
    shown["cells"].insert(1 if shown["cells"] else 0, cell)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(shown, indent=1))


def chapter_page(chapter: str, papers: list[dict], root: Path) -> str:
    title, description = CHAPTERS[chapter]
    lines = [f"# {title}", "", description, "", "| paper | arXiv | notebook |", "| --- | --- | --- |"]
    for paper in papers:
        nb = notebook_for(paper, root)
        link = f"[{paper['id']} · open the notebook](../notebooks/{chapter}/{nb.stem}.ipynb)" if nb else "*not yet written*"
        arxiv = f"[{paper['arxiv']}](https://arxiv.org/abs/{paper['arxiv']})"
        lines.append(f"| **{paper['id']}** {paper['title_or_topic']} | {arxiv} | {link} |")
    written = sum(1 for p in papers if notebook_for(p, root))
    lines += ["", f"{written} of {len(papers)} papers in this chapter have a notebook so far."]
    return "\n".join(lines) + "\n"


def _fmt(summary: dict, scale: float) -> str:
    mean, std, n = summary["mean"] * scale, summary["std"] * scale, len(summary["values"])
    return f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"


def _cell(text) -> str:
    """Text made safe for one cell of a Markdown table: ``|`` escaped, line breaks as ``<br>``."""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("|", "\\|").replace("\n", "<br>")


def _comparison_text(c: dict, headline: str) -> str:
    """One comparison in a cell: "TOOD vs ATSS, AP: +0.4 [-1.2, +2.0] (n=3) → inconclusive".

    The headline metric and the AP family (AP, APs, "AP shared class", ...) are fractions and are
    shown in points (x100), as in the "ours" column; other metrics in their own units.
    """
    scale = 100.0 if c["metric"] == headline or c["metric"].startswith("AP") else 1.0
    mean = c["difference_mean"] * scale
    interval = c.get("interval_95")
    span = f" [{interval[0] * scale:+.1f}, {interval[1] * scale:+.1f}]" if interval else ""
    check = c.get("engaged")
    failed = f"; check failed: {check['value']:.3g} < {check['threshold']:.3g}" if check and not check["passed"] else ""
    return _cell(f"{c['method']} vs {c['baseline']}, {c['metric']}: {mean:+.1f}{span} "
                 f"(n={c['n_seeds']}{failed}) → {c['verdict']}")


def _scoreboard_row(rec: dict, paper: dict, root: Path) -> str:
    """One paper's row: the page and whether it is stale, the verdict and where it ran, the claim,
    our numbers per arm, the comparisons behind the verdict, the paper's numbers."""
    metric = rec["headline"]
    ours = "<br>".join(f"{_cell(method)}: {_fmt(m[metric], 100)} {_cell(metric)}"
                       for method, m in rec["metrics"].items())
    compared = "<br>".join(_comparison_text(c, rec["headline"]) for c in rec.get("comparisons") or []) or "—"
    theirs = "<br>".join(f"{_cell(k)}: {_cell(v)}" for k, v in rec["paper_numbers"].items())
    nb = notebook_for(paper, root) if paper.get("chapter") else None
    if nb is None:
        page = f"{paper.get('short', '')} (no notebook)"
    else:
        state = provenance.status(json.loads(nb.read_text()), rec["profile"], root)
        link = f"[{paper['short']}](notebooks/{paper['chapter']}/{nb.stem}.ipynb)"
        page = f"{link} {'(stale)' if state.needs_run else '(up to date)'}"
    return (f"| **{rec['paper']}** {page} | **{_cell(rec['verdict'])}**<br><small>({rec['profile']}, "
            f"{_cell(rec['device'])}, {rec['wall_seconds']:.0f} s)</small> | {_cell(rec['claim'])} | {ours} | "
            f"{compared} | {theirs} |")


def scoreboard_page(records: list[dict], papers: list[dict], root: Path) -> str:
    """One row per paper with results: the best profile's record (gpu, else cpu; never smoke).

    The rows are grouped by chapter, in book order, one table per chapter (same columns, same
    widths: see book/_static/kit-book.css). The page asks for the full width (the
    ``kit-full-width`` marker: the navigation starts collapsed, see book/_static/kit-book.js).
    """
    by_paper = {}
    for rec in records:
        if rec["profile"] == "smoke":
            continue
        best = by_paper.get(rec["paper"])
        if best is None or provenance.PROFILE_RANK[rec["profile"]] > provenance.PROFILE_RANK[best["profile"]]:
            by_paper[rec["paper"]] = rec
    lines = ["# Scoreboard", "", '<div class="kit-full-width"></div>', "",
             "Every notebook records its results under `results/<profile>/`. This page shows, per paper, "
             "our verdict and where it ran, the claim we tested, our numbers (mean ± std over seeds; "
             "metrics in %), the comparisons behind the verdict, the paper's numbers, and whether the executed page is still "
             "up to date with the code. Numbers from the cpu profile come from a reduced-scale run on "
             "a laptop-class CPU: they test the direction of a claim, not its size.", "",
             "Each verdict follows from the kit's one rule (`kit.experiment`): per declared claim, the "
             "paired differences method − baseline over the seeds (the paper's side positive), their "
             "95 % Student-t interval, the practical margin declared before the run and the check that "
             "the mechanism engaged. The *comparisons* column shows them: mean difference [interval] "
             "(n seeds) → that claim's verdict."]
    header = ["| paper | verdict (ran at) | claim | ours | comparisons | paper's numbers |",
              "| --- | --- | --- | --- | --- | --- |"]
    titles = {p["id"]: p for p in papers}
    groups: dict[str, list[str]] = {}  # chapter title -> its rows, in book order
    order = {chapter: i for i, chapter in enumerate(CHAPTERS)}
    for paper_id in sorted(by_paper, key=lambda pid: (order.get(titles.get(pid, {}).get("chapter"), len(order)), pid)):
        paper = titles.get(paper_id, {"short": paper_id, "chapter": ""})
        title = CHAPTERS[paper["chapter"]][0] if paper.get("chapter") in CHAPTERS else "Other papers"
        groups.setdefault(title, []).append(_scoreboard_row(by_paper[paper_id], paper, root))
    for title, rows in groups.items():
        lines += ["", f"## {title}", ""] + header + rows
    if not by_paper:
        lines += [""] + header + ["| — | no results recorded yet | | | | |"]
    return "\n".join(lines) + "\n"


def toc(chapters_with_notebooks: dict[str, list[str]]) -> str:
    lines = ["format: jb-book", "root: intro", "parts:", "- caption: Using the kit", "  chapters:",
             "  - file: scoreboard", "- caption: Papers", "  chapters:"]
    for chapter, notebooks in chapters_with_notebooks.items():
        lines.append(f"  - file: chapters/{chapter}")
        if notebooks:
            lines.append("    sections:")
            lines += [f"    - file: {nb}" for nb in notebooks]
    return "\n".join(lines) + "\n"


def build(root: Path | None = None) -> Path:
    """Write ``book/_generated``; returns its path."""
    root = Path(root) if root is not None else paths.root()
    book, out = root / "book", root / "book" / "_generated"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("_config.yml", "intro.md"):
        shutil.copy2(book / name, out / name)
    # _static: files every page links (Jupyter Book adds each .js/.css in it to every page);
    # _vendor: files copied as they are and loaded on demand (MathJax and its parts).
    for folder in ("_static", "_vendor"):
        if (book / folder).exists():
            shutil.copytree(book / folder, out / folder)

    from kit.results import load_all

    papers = read_papers(root / "kit" / "papers.tsv")
    chapters = {}
    for chapter in CHAPTERS:
        members = [p for p in papers if p["chapter"] == chapter]
        if not members:
            continue
        (out / "chapters").mkdir(exist_ok=True)
        (out / "chapters" / f"{chapter}.md").write_text(chapter_page(chapter, members, root))
        chapters[chapter] = []
        for paper in members:
            nb = notebook_for(paper, root)
            if nb:
                copy_notebook(nb, out / "notebooks" / chapter / nb.name, root)
                chapters[chapter].append(f"notebooks/{chapter}/{nb.stem}")
    (out / "scoreboard.md").write_text(scoreboard_page(load_all(root / "results"), papers, root))
    (out / "_toc.yml").write_text(toc(chapters))
    return out


if __name__ == "__main__":
    print(f"book sources written to {build()}")
