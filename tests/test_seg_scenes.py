"""kit.data.seg_scenes: class maps with ignore labels, scale regimes, styles and label spaces."""
import pytest
import torch

from kit.data import cache, seg_scenes
from kit.data.seg_scenes import IGNORE_INDEX, STYLES, SegSceneConfig, SegStyle, generate, ignore_band_mask
from kit.data.shapes import SHAPES


def make(**options):
    options = {"num_images": 12, "image_size": 32, "seed": 3, **options}
    return generate(SegSceneConfig(**options), use_cache=False)


def test_shapes_and_dtypes_and_the_batch():
    ds = make(regimes=("small", "large"))
    assert ds.images.shape == (12, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.targets.shape == ds.raw_targets.shape == (12, 32, 32) and ds.targets.dtype == torch.uint8
    assert ds.regimes.shape == ds.object_sizes.shape == (12,)
    images, targets = ds.batch([3, 0, 5])
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32 and 0 <= images.min() <= images.max() <= 1
    assert targets.dtype == torch.long and torch.equal(targets, ds.targets[[3, 0, 5]].long())
    step = ds.batch_for(4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(step(7), step(7)))


def test_deterministic_from_the_seed_and_cached_identically(tmp_path, monkeypatch):
    config = SegSceneConfig(num_images=10, image_size=32, regimes=("small", "mixed"), style="night",
                            ignore_band=1, unlabeled_fraction=0.2, seed=5)
    a, b = generate(config, use_cache=False), generate(config, use_cache=False)
    other = generate(SegSceneConfig(**{**config.__dict__, "seed": 6}), use_cache=False)
    for field in a.tensor_fields():
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.targets, other.targets)
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    stored, loaded = generate(config), generate(config)  # the second reads the cache entry
    assert len(list((tmp_path / "data" / "cache").glob("seg_scenes-*.pt"))) == 1
    for field in a.tensor_fields():
        assert torch.equal(getattr(a, field), getattr(stored, field))
        assert torch.equal(getattr(a, field), getattr(loaded, field))
    assert cache.source_hash("kit.data.seg_scenes") != cache.source_hash("kit.data.shapes")  # follows shapes' source too


def test_plain_targets_are_the_visible_masks_classes():
    ds = make(num_classes=4)
    assert set(ds.targets.unique().tolist()) <= set(range(5)) and torch.equal(ds.targets, ds.raw_targets)
    assert (ds.targets > 0).any() and (ds.targets == 0).any()


def test_styles_change_the_pixels_and_not_the_labels():
    base = make(style="clean")
    for name in STYLES:
        styled = make(style=name)
        assert torch.equal(styled.targets, base.targets)
        assert name == "clean" or (styled.images.float() - base.images.float()).abs().mean() > 10  # grey levels
    # a custom style is accepted; an identity style with the default texture is "clean"
    assert torch.equal(make(style=SegStyle()).images, base.images)


def test_scale_regimes_differ_in_object_size_and_count():
    ds = make(num_images=48, regimes=("small", "large"), image_size=64)
    small, large = ds.regimes == 0, ds.regimes == 1
    assert small.sum() > 5 and large.sum() > 5  # picked per image
    assert ds.object_sizes[small].max() < ds.object_sizes[large].min()
    assert (ds.targets[small] > 0).float().mean() < (ds.targets[large] > 0).float().mean()


def test_ignore_band_marks_exactly_the_pixels_near_a_class_change():
    plain, banded = make(), make(ignore_band=1)
    expected = ignore_band_mask(plain.targets.long(), 1)
    assert torch.equal(banded.targets == IGNORE_INDEX, expected)
    assert torch.equal(banded.targets[~expected], plain.targets[~expected])
    # brute force on one image: a 3x3 window holding two classes
    t = plain.targets[0].long()
    padded = torch.nn.functional.pad(t[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    windows = padded.unfold(0, 3, 1).unfold(1, 3, 1)  # (H, W, 3, 3)
    assert torch.equal(expected[0], windows.amax((-1, -2)) != windows.amin((-1, -2)))


def test_unlabeled_objects_are_ignored_whole():
    plain, void = make(num_images=24), make(num_images=24, unlabeled_fraction=0.5)
    ignored = void.targets == IGNORE_INDEX
    assert ignored.any() and not (plain.targets == IGNORE_INDEX).any()
    assert (plain.targets[ignored] > 0).all()  # only object pixels go void
    assert torch.equal(void.targets[~ignored], plain.targets[~ignored])


def test_label_spaces_merge_drop_and_expose_their_remap_table():
    config = SegSceneConfig(num_images=12, image_size=32, num_classes=5, merge=((2, 4),), drop=(5,), seed=3)
    assert config.label_table() == [0, 1, 2, 3, 2, IGNORE_INDEX] and config.num_labels == 4
    assert config.label_names() == ["background", SHAPES[0], f"{SHAPES[1]}+{SHAPES[3]}", SHAPES[2]]
    ds = generate(config, use_cache=False)
    table = torch.tensor(config.label_table() + [IGNORE_INDEX] * (256 - 6), dtype=torch.uint8)
    assert torch.equal(ds.targets, table[ds.raw_targets.long()])
    assert torch.equal(ds.raw_targets, make(num_classes=5).raw_targets)  # same drawing, other labels
    background = SegSceneConfig(num_images=1, num_classes=5, drop=(1, 3), drop_to="background")
    assert background.label_table() == [0, 0, 1, 0, 2, 3] and background.num_labels == 4
    assert SegSceneConfig(num_images=1, merge=[[1, 2]], drop=[3]).merge == ((1, 2),)  # lists accepted


def test_device_agnostic_drawing_on_the_cpu_matches_the_default():
    config = SegSceneConfig(num_images=4, image_size=32, seed=1, style="fog")
    on_cpu = generate(config, torch.device("cpu"), use_cache=False)
    assert torch.equal(on_cpu.images, make(num_images=4, seed=1, style="fog").images)
    assert seg_scenes.IGNORE_INDEX == 255


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_draws_on_the_gpu():
    ds = generate(SegSceneConfig(num_images=8, image_size=32, regimes=("small", "large"), style="night",
                                 ignore_band=1, unlabeled_fraction=0.2), "cuda")
    assert ds.targets.is_cuda and ds.batch([0, 1], "cuda")[1].dtype == torch.long
