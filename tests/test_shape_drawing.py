"""kit.data.shape_drawing: the public drawing steps draw exactly what kit.data.shapes draws."""
import pytest
import torch

from kit.data.shape_drawing import draw_objects, sample_objects
from kit.data.shapes import ShapeSceneConfig, generate


@pytest.mark.parametrize("options", [dict(num_classes=6), dict(num_classes=10, max_objects=4, size_skew=2.0),
                                     dict(num_classes=8, labelled_classes=(0, 2, 5)),
                                     dict(num_classes=6, color_by_class=False)])
def test_the_steps_are_bit_identical_to_shapes(options):
    config = ShapeSceneConfig(num_images=40, image_size=48, seed=7, **options)
    reference = generate(config, use_cache=False)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 0)  # shapes' seed of block 0
    objects = sample_objects(config, config.num_images, generator, "cpu")
    labelled = None
    if config.labelled_classes is not None:
        labelled = torch.zeros(config.num_classes, dtype=torch.bool)
        labelled[list(config.labelled_classes)] = True
    drawn = draw_objects(config, objects, generator, "cpu", labelled=labelled)
    for field in ("images", "boxes", "labels", "masks", "areas"):
        assert torch.equal(drawn[field], getattr(reference, field)), field


def test_labels_and_hues_can_be_replaced():
    config = ShapeSceneConfig(num_images=8, image_size=32, num_classes=4, seed=1)
    objects = sample_objects(config, 8, torch.Generator().manual_seed(0), "cpu")
    labels = objects["shape_id"] + 100  # any ids
    drawn = draw_objects(config, objects, torch.Generator().manual_seed(1), "cpu", labels=labels,
                         base_hue=torch.full(labels.shape, 0.5))
    kept = drawn["labels"][drawn["labels"] >= 0]
    assert len(kept) and kept.min() >= 100
