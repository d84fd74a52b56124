"""The fine-grained shapes generator (kit.data.finegrained)."""
import pytest
import torch

from kit.data.finegrained import MARKER_COLOURS, FineShapesConfig, generate_finegrained


@pytest.fixture(scope="module")
def fine():
    return generate_finegrained(FineShapesConfig(images_per_class=6, num_bases=4, num_details=4, seed=2))


def test_balanced_labels_and_shapes(fine):
    assert len(fine) == 96 and fine.images.shape == (96, 3, 32, 32) and fine.images.dtype == torch.uint8
    assert torch.bincount(fine.labels, minlength=16).eq(6).all()
    assert torch.equal(fine.labels, fine.bases * 4 + fine.details)
    assert len(fine.class_names) == 16 and fine.class_names[5] == "square+blue"
    images, labels = fine.batch([0, 3])
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1 and labels.shape == (2,)


def test_the_marker_is_on_the_object_and_has_the_detail_colour(fine):
    rows = torch.arange(len(fine))
    x, y = fine.markers[:, 0].long(), fine.markers[:, 1].long()
    assert fine.object_masks[rows, y, x].all()
    centre = fine.images[rows, :, y, x].float() / 255  # (B, 3) the marker's centre pixel
    torch.testing.assert_close(centre, MARKER_COLOURS[fine.details], atol=1 / 255, rtol=0)


def test_same_seed_same_data_other_seed_other_data(fine):
    again = generate_finegrained(FineShapesConfig(images_per_class=6, num_bases=4, num_details=4, seed=2))
    other = generate_finegrained(FineShapesConfig(images_per_class=6, num_bases=4, num_details=4, seed=3))
    assert torch.equal(again.images, fine.images) and torch.equal(again.labels, fine.labels)
    assert not torch.equal(other.images, fine.images)


def test_classes_with_one_base_differ_only_near_the_marker():
    """The fine-grained property: without the marker two classes of one base are the same distribution."""
    data = generate_finegrained(FineShapesConfig(images_per_class=40, num_bases=1, num_details=2,
                                                 max_distractors=0, seed=0))
    inside = data.object_masks.clone()
    grid = torch.arange(32) + 0.5
    near = ((grid[None, None, :] - data.markers[:, 0, None, None]) ** 2
            + (grid[None, :, None] - data.markers[:, 1, None, None]) ** 2) <= (data.config.marker_radius + 0.5) ** 2
    body = inside & ~near
    colour = lambda mask, d: data.images.float().permute(0, 2, 3, 1)[mask & (data.details == d)[:, None, None]].mean(0)
    assert (colour(body, 0) - colour(body, 1)).abs().max() < 12  # the body looks alike for both classes
    assert (colour(near & inside, 0) - colour(near & inside, 1)).abs().max() > 100  # the marker does not


def test_bad_config_raises():
    with pytest.raises(ValueError, match="num_details"):
        FineShapesConfig(images_per_class=2, num_details=9)
    with pytest.raises(ValueError, match="images_per_class"):
        FineShapesConfig(images_per_class=0)
    with pytest.raises(ValueError, match="min_extent"):
        FineShapesConfig(images_per_class=2, min_extent=0.8, max_extent=0.5)


# --------------------------------------------------------------------------- context scenes (P41)

from kit.data.context_scenes import ContextScenesConfig, generate_context_scenes  # noqa: E402


def test_context_scene_labels_follow_the_ring():
    scenes = generate_context_scenes(ContextScenesConfig(num_images=40, image_size=48, min_size=6, max_size=12,
                                                         key_size=(12, 16), num_colours=3, seed=4))
    assert scenes.images.shape == (40, 3, 48, 48) and scenes.labels.shape == (40, 48, 48)
    assert scenes.class_names == ["background", "red", "blue", "yellow"]
    for i in range(40):
        on_objects = scenes.labels[i][scenes.labels[i] > 0]
        assert (on_objects == 1 + scenes.key_colours[i]).all()  # every object takes the ring's colour
        assert scenes.key_masks[i].sum() > 10 and (scenes.labels[i][scenes.key_masks[i]] > 0).all()
    # The ring is a ring: its centre pixel is not part of it.
    cx, cy = scenes.key_centres[:, 0].long(), scenes.key_centres[:, 1].long()
    assert not scenes.key_masks[torch.arange(40), cy, cx].any()
    # The colours of the other objects do not give the label away: they are random.
    assert len(torch.unique(scenes.key_colours)) == 3


def test_context_scenes_are_seeded_and_validated():
    config = ContextScenesConfig(num_images=6, seed=1)
    assert torch.equal(generate_context_scenes(config).images, generate_context_scenes(config).images)
    with pytest.raises(ValueError, match="num_colours"):
        ContextScenesConfig(num_images=2, num_colours=1)
    with pytest.raises(ValueError, match="key_size"):
        ContextScenesConfig(num_images=2, key_size=(20, 10))


def test_context_key_mask_is_the_whole_ring_around_its_centre():
    """key_masks is the ring's own pixels: between its hole and its rim, and never painted over."""
    config = ContextScenesConfig(num_images=30, image_size=48, min_size=6, max_size=12, key_size=(12, 16),
                                 num_colours=3, seed=7)
    scenes = generate_context_scenes(config)
    grid = torch.arange(48) + 0.5
    distance = ((grid[None, None, :] - scenes.key_centres[:, 0, None, None]) ** 2
                + (grid[None, :, None] - scenes.key_centres[:, 1, None, None]) ** 2).sqrt()  # (B, H, W)
    low, high = config.key_size
    assert (distance[scenes.key_masks] <= high / 2).all()  # inside the largest rim
    assert (distance[scenes.key_masks] >= 0.55 * low / 2 - 1e-4).all()  # outside the smallest hole
    rim = (distance <= 0.95 * low / 2) & (distance >= 0.6 * high / 2)  # in every possible ring's body
    assert rim.flatten(1).sum(1).min() >= 10 and scenes.key_masks[rim].all()  # drawn last: all of it visible
