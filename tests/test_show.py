"""kit.show.source: the folded block a page shows, and the tag provenance reads."""
import IPython.display

from kit import show
from kit.book import provenance


def example(x):
    """Double x, the one line a reader sees folded."""
    return 2 * x  # the code one click away


def test_source_is_folded_under_its_name_and_summary_and_tagged(monkeypatch):
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False, metadata=None: shown.append((obj, metadata)))
    show.source(example)
    (bundle, metadata), = shown
    page = bundle["text/html"]
    assert page.startswith(f"<details class='kit-source'><summary><code>{__name__}.example</code>"
                           " — Double x, the one line a reader sees folded.</summary>")
    assert "the code one click away" in page and "<details" in page and " open" not in page.split(">")[0]
    assert "```python\ndef example(x):" in bundle["text/markdown"]
    assert metadata == {"kit_source": {"module": __name__, "qualname": "example"}}


def test_a_kit_object_shown_is_found_again_by_provenance(monkeypatch):
    """The tag names what shown_source_hash finds in the module file: the same text inspect shows."""
    import hashlib

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False, metadata=None: shown.append(metadata))
    show.source(show.source_text, show.summary_line)
    for tag in shown:
        module, qualname = tag["kit_source"]["module"], tag["kit_source"]["qualname"]
        _, code = show.source_text(getattr(show, qualname))
        assert provenance.shown_source_hash(module, qualname) == hashlib.sha256(code.encode()).hexdigest()


def test_the_summary_line_is_the_objects_own_docstring_never_an_inherited_one():
    import torch

    class Undocumented(torch.nn.Module):
        def forward(self, x):
            return x

    class Documented(torch.nn.Module):
        def forward(self, x):
            """Return x unchanged.

            More lines the summary leaves out.
            """
            return x

    assert show.summary_line(Undocumented.forward) == ""  # not nn.Module.forward's "Define the computation..."
    assert show.summary_line(Documented.forward) == "Return x unchanged."
    assert show.summary_line(example) == "Double x, the one line a reader sees folded."
