import warnings

import numpy as np
import pytest
import torch

from kit.data import cache
from kit.data.shapes import SHAPES, ShapeSceneConfig, generate, to_coco


def test_generator_is_deterministic_per_seed():
    a = generate(ShapeSceneConfig(num_images=6, image_size=48, seed=5), use_cache=False)
    b = generate(ShapeSceneConfig(num_images=6, image_size=48, seed=5), use_cache=False)
    c = generate(ShapeSceneConfig(num_images=6, image_size=48, seed=6), use_cache=False)
    for key in ("images", "boxes", "labels", "masks", "areas"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert not torch.equal(a.images, c.images)


def test_whole_blocks_do_not_depend_on_dataset_size():
    small = generate(ShapeSceneConfig(num_images=256, image_size=24, seed=2), use_cache=False)
    large = generate(ShapeSceneConfig(num_images=300, image_size=24, seed=2), use_cache=False)
    assert torch.equal(small.images, large.images[:256]) and torch.equal(small.boxes, large.boxes[:256])


def test_boxes_are_tight_around_visible_masks(scenes):
    size = scenes.config.image_size
    for i in range(len(scenes)):
        boxes, labels = scenes.targets(i)
        assert len(boxes) >= 1
        assert ((labels >= 0) & (labels < scenes.config.num_classes)).all()
        assert (boxes >= 0).all() and (boxes <= size).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()
        for slot, box in enumerate(boxes):
            ys, xs = torch.nonzero(scenes.masks[i, slot], as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            assert scenes.areas[i, slot] == len(xs)


def test_masks_are_disjoint_and_padding_is_empty(scenes):
    assert (scenes.masks.sum(1) <= 1).all()  # occlusion: one owner per pixel
    padded = scenes.labels < 0
    assert not scenes.masks[padded].any()
    assert (scenes.boxes[padded] == 0).all()


def test_sizes_span_small_to_large():
    scenes = generate(ShapeSceneConfig(num_images=200, image_size=96, seed=0), use_cache=False)
    boxes = scenes.boxes[scenes.labels >= 0]
    extent = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values
    assert extent.min() < 10 and extent.max() > 60
    assert len(scenes.labels[scenes.labels >= 0].unique()) == scenes.config.num_classes


def test_batch_returns_float_images_and_targets(scenes):
    images, boxes, labels = scenes.batch([0, 3], device="cpu")
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    assert torch.equal(images[1], scenes.images[3].float() / 255)
    assert torch.equal(boxes[1], scenes.targets(3)[0]) and torch.equal(labels[1], scenes.targets(3)[1])


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="num_classes"):
        ShapeSceneConfig(num_images=2, num_classes=len(SHAPES) + 1)
    with pytest.raises(ValueError, match="min_objects"):
        ShapeSceneConfig(num_images=2, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="max_size"):
        ShapeSceneConfig(num_images=2, min_size=20, max_size=10)


def test_coco_export(scenes):
    coco = to_coco(scenes, with_masks=True)
    assert len(coco["images"]) == len(scenes)
    assert len(coco["annotations"]) == int((scenes.labels >= 0).sum())
    assert [c["name"] for c in coco["categories"]] == scenes.class_names
    ann = coco["annotations"][0]
    from pycocotools import mask as mask_utils

    assert mask_utils.area(ann["segmentation"]) == ann["area"]
    x, y, w, h = ann["bbox"]
    assert np.allclose(mask_utils.toBbox(ann["segmentation"]), [x, y, w, h])


def test_cache_round_trip_and_corruption(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(10)}

    params = {"a": 1}
    first = cache.cached("t", params, build, folder=tmp_path)
    second = cache.cached("t", params, build, folder=tmp_path)
    assert torch.equal(first["x"], second["x"]) and len(calls) == 1
    entry = next(tmp_path.glob("t-*.pt"))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    entry.write_bytes(entry.read_bytes()[:20])  # truncate
    with pytest.warns(UserWarning, match="checksum"):
        third = cache.cached("t", params, build, folder=tmp_path)
    assert torch.equal(third["x"], first["x"]) and len(calls) == 2
    entry.write_bytes(b"garbage")
    (tmp_path / (entry.stem + ".sha256")).write_text(cache._sha256(b"garbage"))  # checksum matches, content bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fourth = cache.cached("t", params, build, folder=tmp_path)
    assert torch.equal(fourth["x"], first["x"]) and len(calls) == 3


def test_dataset_cache_equals_fresh_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    config = ShapeSceneConfig(num_images=5, image_size=40, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # writing and reading a fresh entry warns about nothing
        cached = generate(config)
        assert list((tmp_path / "data" / "cache").glob("shapes-*.pt"))
        again = generate(config)
    fresh = generate(config, use_cache=False)
    for key in ("images", "boxes", "labels", "masks", "areas"):
        assert torch.equal(getattr(cached, key), getattr(fresh, key))
        assert torch.equal(getattr(again, key), getattr(fresh, key))


def test_labelled_classes_and_size_skew():
    base = ShapeSceneConfig(num_images=40, image_size=64, seed=4)
    partial = generate(ShapeSceneConfig(num_images=40, image_size=64, seed=4, labelled_classes=(0, 1, 2)), use_cache=False)
    full = generate(base, use_cache=False)
    assert torch.equal(partial.images, full.images)  # same pictures, fewer labels
    labels = partial.labels[partial.labels >= 0]
    assert set(labels.tolist()) <= {0, 1, 2} and len(labels) < int((full.labels >= 0).sum())
    assert not partial.masks[partial.labels < 0].any()
    large = generate(ShapeSceneConfig(num_images=100, image_size=64, seed=4, size_skew=3.0), use_cache=False)
    extent = lambda s: (s.boxes[..., 2:] - s.boxes[..., :2]).max(-1).values[s.labels >= 0].median()
    assert extent(large) > extent(full)
    with pytest.raises(ValueError, match="labelled_classes"):
        ShapeSceneConfig(num_images=2, labelled_classes=(9,))


# --------------------------------------------------------------------------- raster (shared drawing maths)

from kit.data import raster  # noqa: E402


def test_object_frame_puts_the_centre_at_the_origin_and_the_axes_on_the_half_extents():
    """The object's own axes: +u along (cos r, sin r) in image (x, y), +v 'up' (-y at r = 0)."""
    rotation = torch.tensor([0.0, 0.3, -0.35])[:, None, None]
    cx, cy = torch.tensor([10.5, 20.0, 7.25])[:, None, None], torch.tensor([12.0, 5.5, 30.0])[:, None, None]
    half_w, half_h = torch.tensor([4.0, 6.0, 3.0])[:, None, None], torch.tensor([2.0, 3.0, 5.0])[:, None, None]
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    along_u = (cx + half_w * cos, cy + half_w * sin)  # one half-width along +u
    along_v = (cx + half_h * sin, cy - half_h * cos)  # one half-height along +v
    for (x, y), expected in [((cx, cy), (0, 0)), (along_u, (1, 0)), (along_v, (0, 1))]:
        u, v = raster.object_frame(x, y, cx, cy, half_w, half_h, rotation)
        torch.testing.assert_close(u, torch.full_like(u, float(expected[0])), atol=1e-5, rtol=0)
        torch.testing.assert_close(v, torch.full_like(v, float(expected[1])), atol=1e-5, rtol=0)


def test_every_shape_lies_in_its_unit_square_and_covers_its_centre_unless_hollow():
    grid = torch.linspace(-1.5, 1.5, 121)
    v, u = torch.meshgrid(grid, grid, indexing="ij")
    for name, inside in raster.INSIDE_TESTS.items():
        mask = inside(u, v)
        assert mask.any(), name
        assert not mask[(u.abs() > 1.0) | (v.abs() > 1.0)].any(), name  # every shape spans at most [-1, 1]^2
        centre = bool(inside(torch.tensor(0.0), torch.tensor(0.0)))
        assert centre == (name not in ("ring", "corner")), name  # the ring is hollow, the L's centre is empty


def test_tight_boxes_agree_with_torchvision_and_are_zero_for_empty_masks():
    from torchvision.ops import masks_to_boxes

    generator = torch.Generator().manual_seed(0)
    masks = torch.rand((6, 20, 24), generator=generator) > 0.995
    masks[2] = False
    boxes = raster.tight_boxes(masks)  # (6, 4), x2/y2 one past the last pixel
    full = masks.flatten(1).any(1)
    torch.testing.assert_close(boxes[full], masks_to_boxes(masks[full]) + torch.tensor([0, 0, 1, 1.0]))
    assert (boxes[~full] == 0).all()
    assert raster.tight_boxes(masks.view(2, 3, 20, 24)).shape == (2, 3, 4)  # any leading dimensions


def test_hsv_to_rgb_agrees_with_colorsys():
    import colorsys

    generator = torch.Generator().manual_seed(1)
    h, s, v = torch.rand((3, 50), generator=generator, dtype=torch.float64)
    expected = torch.tensor([colorsys.hsv_to_rgb(*hsv) for hsv in zip(h.tolist(), s.tolist(), v.tolist())])
    torch.testing.assert_close(raster.hsv_to_rgb(h, s, v), expected.to(torch.float64))


def test_discs_hold_the_pixels_within_the_radius():
    centres = torch.tensor([[5.5, 5.5], [0.0, 9.0]])  # (x, y); the second straddles the border
    masks = raster.discs(centres, 2.0, 12)
    gy, gx = raster.pixel_centres(12)
    for disc, (x, y) in zip(masks, centres.tolist()):
        assert torch.equal(disc, (gx - x) ** 2 + (gy - y) ** 2 <= 4.0)
    assert masks[0].sum() == 13 and masks[0, 5, 5] and not masks[0, 5, 8]  # a digital disc of radius 2


# --------------------------------------------------------------------------- the dataset base and the sampler

from kit.data.sampling import epoch_sampler  # noqa: E402


def test_epoch_sampler_draws_each_epoch_from_its_seeded_permutation():
    """The order every notebook's numbers depend on: epoch e is randperm seeded with seed * 100_003 + e."""
    sampler = epoch_sampler(10, 3, seed=4)
    for epoch in range(3):
        order = torch.randperm(10, generator=torch.Generator().manual_seed(4 * 100_003 + epoch))
        steps = torch.cat([sampler(3 * epoch + position) for position in range(3)])
        assert torch.equal(steps, order[:9])  # three full batches; the tenth item sits out this epoch
    assert not torch.equal(sampler(0), sampler(3))  # a new epoch, a new order
    assert torch.equal(epoch_sampler(10, 3, seed=4)(7), sampler(7))  # a pure function of the step


def test_epoch_sampler_without_drop_last_or_shuffle_covers_every_item():
    keep_last = epoch_sampler(10, 3, seed=2, drop_last=False)
    epoch = [keep_last(step) for step in range(4)]
    assert [len(b) for b in epoch] == [3, 3, 3, 1] and sorted(torch.cat(epoch).tolist()) == list(range(10))
    in_order = epoch_sampler(10, 4, seed=2, shuffle=False, drop_last=False)
    assert [in_order(step).tolist() for step in range(4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="batch_size must be in 1..10"):
        epoch_sampler(10, 11, seed=0)


def test_batch_for_and_batches_give_the_sampler_batches(scenes):
    sampler = epoch_sampler(len(scenes), 5, seed=3)
    batch_for = scenes.batch_for(5, seed=3)
    from_iterator = list(scenes.batches(5, seed=3, start_step=2, steps=6))
    assert len(from_iterator) == 6
    for step, (images, boxes, labels) in enumerate(from_iterator, start=2):
        expected = scenes.batch(sampler(step))
        assert torch.equal(images, expected[0]) and torch.equal(batch_for(step)[0], images)
        assert all(torch.equal(a, b) for a, b in zip(boxes + labels, expected[1] + expected[2]))
    endless = scenes.batches(5, seed=3)
    assert all(torch.equal(next(endless)[0], batch_for(step)[0]) for step in range(10))  # past one epoch (4 steps)


def _every_dataset():
    from kit.data.context_scenes import ContextScenesConfig, generate_context_scenes
    from kit.data.finegrained import FineShapesConfig, generate_finegrained
    from kit.data.two_ring_scenes import TwoRingScenesConfig, generate_two_ring_scenes

    return [generate(ShapeSceneConfig(num_images=6, image_size=32, seed=1), use_cache=False),
            generate_context_scenes(ContextScenesConfig(num_images=6, image_size=32, min_size=6, max_size=10,
                                                        key_size=(10, 12))),
            generate_two_ring_scenes(TwoRingScenesConfig(num_images=6, min_separation=10)),
            generate_finegrained(FineShapesConfig(images_per_class=1, num_bases=2, num_details=3))]


@pytest.mark.parametrize("data", _every_dataset(), ids=lambda d: type(d).__name__)
def test_subset_and_to_keep_every_field_of_every_dataset(data):
    names = data.tensor_fields()
    assert names[0] == "images" and len(names) >= 3
    picked = data.subset([4, 1])
    assert type(picked) is type(data) and picked.config == data.config and len(picked) == 2
    for name in names:
        whole, part = getattr(data, name), getattr(picked, name)
        assert len(whole) == len(data) and torch.equal(part[0], whole[4]) and torch.equal(part[1], whole[1]), name
    moved = data.to("meta")  # a device every machine has: the move must reach every tensor field
    assert type(moved) is type(data) and all(getattr(moved, n).device.type == "meta" for n in names)
    images, *targets = data.batch(torch.tensor([4, 1]))
    assert torch.equal(images, picked.images.float() / 255) and torch.equal(data.float_images([4, 1]), images)
    assert torch.equal(data.float_images(slice(1, 5, 3)), images.flip(0))  # a slice: images 1 and 4
    if hasattr(data, "targets"):  # shape scenes: per-image lists of boxes and labels
        assert torch.equal(targets[1][0], data.targets(4)[1])
    else:
        assert len(targets) == 1 and torch.equal(targets[0], picked.labels)
