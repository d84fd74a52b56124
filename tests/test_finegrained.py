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
            + (grid[None, :, None] - data.markers[:, 1, None, None]) ** 2) <= 4.0  # (B, H, W)
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
