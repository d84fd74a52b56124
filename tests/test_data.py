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
    assert 0 <= images.min() and images.max() <= 1
    assert torch.equal(boxes[1], scenes.targets(3)[0]) and torch.equal(labels[1], scenes.targets(3)[1])
    moved = scenes.to("cpu")
    assert moved.images.device.type == "cpu" and len(scenes.subset([1, 2])) == 2


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
