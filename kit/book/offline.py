"""A Sphinx extension for the book: no page names a CDN it does not use.

Jupyter Book 1 always loads ``sphinx_thebe``, which writes an inline script declaring
``THEBE_JS_URL`` (a CDN address) and adds ``sphinx-thebe.js`` to every page, although the book
has no live-code launcher. Thebe is never started, but a page that names a CDN address is not
an offline page (and the declaration is repeated, a console ``SyntaxError``). This extension
drops both from each page's scripts. Listed in ``book/_config.yml`` under
``sphinx.extra_extensions``.
"""
from __future__ import annotations


def _is_thebe(script) -> bool:
    """True for sphinx-thebe's inline configuration script and its loader file."""
    filename = str(getattr(script, "filename", script) or "")
    body = getattr(script, "attributes", {}).get("body", "")
    return "sphinx-thebe" in filename or "THEBE_JS_URL" in body or "thebe@" in filename


def drop_thebe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if scripts:
        context["script_files"] = [s for s in scripts if not _is_thebe(s)]


def setup(app):
    app.connect("html-page-context", drop_thebe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
