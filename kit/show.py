"""Show the code that runs: render a kit function's or class's source in the notebook page.

``source(obj)`` displays the source as a highlighted Python block, folded under the object's
full name and the first line of its docstring (one click opens it). What the reader sees is the
code the notebook calls, not a copy that could drift. Each block carries, in its output
metadata, the module and qualified name it shows (``{"kit_source": {"module", "qualname"}}``):
the book's provenance hashes exactly that source, so the page goes stale when what it shows
changes, comments and docstrings included (:mod:`kit.book.provenance`).
"""
from __future__ import annotations

import inspect
import textwrap


def source_text(obj) -> tuple[str, str]:
    """(module name, dedented source) of a function, class or method."""
    try:
        code = inspect.getsource(obj)
        module = inspect.getmodule(obj).__name__
    except (TypeError, OSError) as error:
        raise TypeError(f"cannot show the source of {obj!r}: {error}") from None
    return module, textwrap.dedent(code).rstrip()


def summary_line(obj) -> str:
    """The first line of an object's own docstring, or "" when it has none (none is inherited)."""
    doc = inspect.cleandoc(obj.__doc__) if isinstance(getattr(obj, "__doc__", None), str) else ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _folded_html(module: str, name: str, code: str, summary: str) -> str:
    """The source as a closed <details> block: its name and summary line visible, the code one click away."""
    import html

    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    body = highlight(code, PythonLexer(), HtmlFormatter(cssclass="highlight"))
    head = f"<code>{html.escape(module)}.{html.escape(name)}</code>"
    if summary:
        head += f" — {html.escape(summary)}"
    return f"<details class='kit-source'><summary>{head}</summary>{body}</details>"


def source(*objects):
    """Display the source of each object, folded: its name and one-line summary, the code one click away.

    One output per object, with the code as Markdown too (what a front end without HTML shows).
    """
    from IPython.display import display

    for obj in objects:
        module, code = source_text(obj)
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
        bundle = {"text/html": _folded_html(module, name, code, summary_line(obj)),
                  "text/markdown": f"**`{module}.{name}`**\n\n```python\n{code}\n```",
                  "text/plain": f"{module}.{name}"}
        display(bundle, raw=True, metadata={"kit_source": {"module": module, "qualname": name}})
