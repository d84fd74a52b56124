"""Show the code that runs: render a kit function's or class's source in the notebook page.

``source(obj)`` displays the source as a highlighted Python block (Markdown, so the book
renders it like any code), headed by the module it lives in. What the reader sees is the
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


def source(*objects):
    """Display the source of each object as a Markdown code block."""
    from IPython.display import Markdown, display

    for obj in objects:
        module, code = source_text(obj)
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
        display(Markdown(f"**`{module}.{name}`**\n\n```python\n{code}\n```"),
                metadata={"kit_source": {"module": module, "qualname": name}})
