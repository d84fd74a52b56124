"""Bad input to the data cache, the generators' cache keys and the runtime set-up (KIT_THREADS).

One table of inputs that must be refused (with the exception type and a phrase of its
message), then the cases that must *work*: an edited generator regenerates, orphan temporary
files of killed writers are cleaned (never a live writer's), a read-only data folder warns
and still returns the data, an empty KIT_THREADS means unset, too many threads are capped.
No test here hands torch more threads than the machine has: ``torch.set_num_threads`` is
replaced by a recorder wherever ``setup`` would reach it.
"""
import os
import shutil
import time

import pytest
import torch

from kit import io as kit_io
from kit import runtime
from kit.data import cache, shapes
from kit.data.seg_scenes import SegSceneConfig, SegStyle
from kit.data.seg_scenes import generate as generate_seg
from kit.data.shapes import ShapeSceneConfig, generate

CORES = runtime.available_cores()


@pytest.fixture
def thread_calls(monkeypatch):
    """Record what ``setup`` passes to torch instead of changing the process's thread pool."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setenv("KIT_PROFILE", "smoke")
    yield calls
    torch.use_deterministic_algorithms(False)


def setup_with_env(monkeypatch, value):
    monkeypatch.setenv("KIT_THREADS", value)
    return lambda: runtime.setup(seed=0)


BAD = [
    # id, call (gets monkeypatch), exception type, phrase of the message
    ("threads-env-not-a-number", lambda mp: setup_with_env(mp, "abc")(), ValueError,
     r"KIT_THREADS must be a whole number from 1 to \d+ .*got 'abc'"),
    ("threads-env-fraction", lambda mp: setup_with_env(mp, "1.5")(), ValueError, r"KIT_THREADS must be .*'1\.5'"),
    ("threads-env-zero", lambda mp: setup_with_env(mp, "0")(), ValueError, r"KIT_THREADS must be .*got 0"),
    ("threads-env-negative", lambda mp: setup_with_env(mp, "-2")(), ValueError, r"KIT_THREADS must be .*got -2"),
    ("threads-arg-zero", lambda mp: runtime.setup(threads=0), ValueError, r"threads must be a whole number from 1"),
    ("threads-arg-bool", lambda mp: runtime.setup(threads=True), TypeError, r"threads must be .*type bool"),
    ("threads-arg-float", lambda mp: runtime.setup(threads=2.5), TypeError, r"threads must be .*type float"),
    ("source-hash-not-a-generator", lambda mp: cache.source_hash("kit.det.boxes"), ValueError,
     r"module file under kit/data/"),
    # segmentation scenes (kit.data.seg_scenes): the config names what is allowed
    ("seg: no images", lambda mp: SegSceneConfig(num_images=0), ValueError, r"SegSceneConfig: num_images must be >= 1"),
    ("seg: too many classes", lambda mp: SegSceneConfig(num_images=2, num_classes=11), ValueError,
     r"num_classes must be in 1\.\.10"),
    ("seg: unknown regime", lambda mp: SegSceneConfig(num_images=2, regimes=("tiny",)), ValueError,
     r"regimes must be a non-empty tuple of \['large', 'mixed', 'small'\]"),
    ("seg: no regime", lambda mp: SegSceneConfig(num_images=2, regimes=()), ValueError, r"regimes must be a non-empty"),
    ("seg: unknown style", lambda mp: SegSceneConfig(num_images=2, style="rain"), ValueError,
     r"style must be a SegStyle or one of \['clean', 'fog', 'night', 'warm'\]"),
    ("seg style: 3x2 colour matrix", lambda mp: SegStyle(colour_matrix=((1, 0), (0, 1), (0, 0))), ValueError,
     r"SegStyle: colour_matrix must be 3x3"),
    ("seg style: NaN noise", lambda mp: SegStyle(noise=float("nan")), ValueError, r"values must be finite"),
    ("seg style: negative blur", lambda mp: SegStyle(blur_sigma=-1.0), ValueError, r"blur_sigma and noise must be >= 0"),
    ("seg style: zero contrast", lambda mp: SegStyle(contrast=0.0), ValueError, r"contrast must be > 0"),
    ("seg style: full haze", lambda mp: SegStyle(haze=1.0), ValueError, r"haze must be in \[0, 1\)"),
    ("seg: negative ignore band", lambda mp: SegSceneConfig(num_images=2, ignore_band=-1), ValueError,
     r"ignore_band must be an int >= 0"),
    ("seg: fractional ignore band", lambda mp: SegSceneConfig(num_images=2, ignore_band=1.5), ValueError,
     r"ignore_band must be an int >= 0"),
    ("seg: everything unlabeled", lambda mp: SegSceneConfig(num_images=2, unlabeled_fraction=1.0), ValueError,
     r"unlabeled_fraction must be in \[0, 1\)"),
    ("seg: merge of bare ints", lambda mp: SegSceneConfig(num_images=2, merge=(1, 2)), ValueError,
     r"merge must be a tuple of tuples of drawn classes, e.g. \(\(1, 2\),\)"),
    ("seg: regimes a string", lambda mp: SegSceneConfig(num_images=2, regimes="small"), ValueError,
     r"regimes and drop must be tuples"),
    ("seg: merge of one class", lambda mp: SegSceneConfig(num_images=2, merge=((1,),)), ValueError,
     r"each merge group needs >= 2 drawn classes"),
    ("seg: merge of background", lambda mp: SegSceneConfig(num_images=2, merge=((0, 1),)), ValueError,
     r"merge and drop name drawn classes 1\.\.5"),
    ("seg: drop an undrawn class", lambda mp: SegSceneConfig(num_images=2, drop=(6,)), ValueError,
     r"merge and drop name drawn classes 1\.\.5"),
    ("seg: overlapping merges", lambda mp: SegSceneConfig(num_images=2, merge=((1, 2), (2, 3))), ValueError,
     r"merge groups must be disjoint"),
    ("seg: merge a dropped class", lambda mp: SegSceneConfig(num_images=2, merge=((1, 2),), drop=(2,)), ValueError,
     r"must not contain dropped classes"),
    ("seg: drop every class", lambda mp: SegSceneConfig(num_images=2, num_classes=2, drop=(1, 2)), ValueError,
     r"drop must leave at least one class"),
    ("seg: unknown drop_to", lambda mp: SegSceneConfig(num_images=2, drop=(1,), drop_to="void"), ValueError,
     r"drop_to must be 'ignore' or 'background'"),
    ("seg: negative seed", lambda mp: SegSceneConfig(num_images=2, seed=-1), ValueError, r"seed must be >= 0"),
    ("seg: a shapes config", lambda mp: generate_seg(ShapeSceneConfig(num_images=2)), TypeError,
     r"config must be a SegSceneConfig, got ShapeSceneConfig"),
]


@pytest.mark.parametrize("case, call, error, phrase", BAD, ids=[row[0] for row in BAD])
def test_bad_input_is_refused(case, call, error, phrase, monkeypatch, thread_calls):
    with pytest.raises(error, match=phrase):
        call(monkeypatch)
    assert thread_calls == []  # refused before torch was touched


# --------------------------------------------------------------------------- what must work

def test_empty_threads_env_means_unset(monkeypatch, thread_calls):
    setup_with_env(monkeypatch, "")()
    setup_with_env(monkeypatch, "  ")()
    assert thread_calls == [CORES, CORES]


def test_more_threads_than_cores_warns_and_is_capped(monkeypatch, thread_calls):
    with pytest.warns(UserWarning, match=rf"KIT_THREADS=100000 is more than the {CORES} cores"):
        setup_with_env(monkeypatch, "100000")()
    with pytest.warns(UserWarning, match="threads=100000"):
        runtime.setup(threads=100000)
    assert thread_calls == [CORES, CORES]  # never 100000 (that crashes torch's thread pool)
    assert runtime.parse_threads(" 1 ", "KIT_THREADS") == 1 and runtime.parse_threads(None) is None


def test_an_edited_generator_regenerates_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    renders = []
    real_render = shapes._render
    monkeypatch.setattr(shapes, "_render", lambda *a: renders.append(1) or real_render(*a))
    config = ShapeSceneConfig(num_images=3, image_size=32, seed=4)
    first = generate(config)
    generate(config)
    assert len(renders) == 1  # the second call is served from the cache
    real_hash = cache.source_hash
    monkeypatch.setattr(cache, "source_hash", lambda module: "edited" + real_hash(module))
    edited = generate(config)
    assert len(renders) == 2 and len(list((tmp_path / "data" / "cache").glob("shapes-*.pt"))) == 2
    assert torch.equal(edited.images, first.images)  # same code here, so the same tensors


def test_source_hash_follows_the_kit_data_imports(tmp_path):
    folders = {}
    for edit in ("none", "raster", "shapes", "finegrained", "context_scenes", "cache"):
        folder = folders[edit] = tmp_path / edit
        shutil.copytree(cache.Path(cache.__file__).parent, folder, ignore=shutil.ignore_patterns("__pycache__"))
        if edit != "none":
            (folder / f"{edit}.py").write_text((folder / f"{edit}.py").read_text() + "\n# an edit\n")
    generators = ("shapes", "finegrained", "context_scenes", "two_ring_scenes")
    hashes = {edit: {m: cache.source_hash(f"kit.data.{m}", folder) for m in generators}
              for edit, folder in folders.items()}
    base = hashes["none"]
    assert base == {m: cache.source_hash(f"kit.data.{m}") for m in base}  # the copy hashes like the original
    assert all(hashes["raster"][m] != base[m] for m in base)  # every generator draws with raster's maths
    changed = lambda edit: {m for m in generators if hashes[edit][m] != base[m]}
    assert changed("shapes") == {"shapes"} and changed("finegrained") == {"finegrained"}
    assert changed("context_scenes") == {"context_scenes", "two_ring_scenes"}  # two rings use its painting
    assert changed("cache") == set()  # the cache stores tensors, it does not draw them


def test_a_killed_writers_orphan_is_cleaned_on_the_next_write(tmp_path):
    target = tmp_path / "t-abc.pt"
    dead = 2**22 + 12345  # above Linux's default pid_max of 4194304: no such process
    orphan = tmp_path / f".{target.name}.{dead}.k1ll3d_x.tmp"
    live = tmp_path / f".{target.name}.{os.getppid()}.wr1ting_.tmp"  # the parent process is alive
    old_style = tmp_path / f".{target.name}.abcd1234.tmp"  # from a writer before pids were in the name
    fresh_old_style = tmp_path / f".{target.name}.efgh5678.tmp"
    other = tmp_path / f".{target.name}.sha256.{dead}.othr_fil.tmp"  # another path's temp file
    for path in (orphan, live, old_style, fresh_old_style, other):
        path.write_bytes(b"half")
    hour_ago = time.time() - 3600
    os.utime(old_style, (hour_ago, hour_ago))
    kit_io.atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not orphan.exists() and not old_style.exists()
    assert live.exists() and fresh_old_style.exists() and other.exists()
    assert len(list(tmp_path.glob(".*.tmp"))) == 3  # our own temporary file is gone too


def test_a_read_only_data_folder_warns_and_returns_the_data(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(kit_io.tempfile, "mkstemp", read_only)  # as a read-only folder answers (root ignores chmod)
    with pytest.warns(UserWarning, match="could not write the cache entry .*Permission denied"):
        entry = cache.cached("t", {"a": 1}, lambda: {"x": torch.arange(3)}, folder=tmp_path)
    assert torch.equal(entry["x"], torch.arange(3)) and not list(tmp_path.iterdir())
