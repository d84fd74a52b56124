"""Two-ring scenes (kit.data.two_ring_scenes, P41): labels follow the nearer ring; seeded; validated."""
import pytest
import torch

from kit.data.two_ring_scenes import TwoRingScenesConfig, generate_two_ring_scenes


def scenes(**kwargs):
    return generate_two_ring_scenes(TwoRingScenesConfig(num_images=40, **kwargs))


def test_every_object_pixel_takes_the_colour_of_the_nearer_ring():
    s = scenes(seed=3)
    assert s.images.shape == (40, 3, 48, 48) and s.images.dtype == torch.uint8
    assert (s.key_colours[:, 0] != s.key_colours[:, 1]).all()  # the two rings never share a colour
    objects = s.labels > 0
    assert torch.equal(objects, s.nearest >= 0)
    ring_colour = torch.gather(s.key_colours, 1, s.nearest.clamp(min=0).flatten(1)).view_as(s.labels)
    assert torch.equal(s.labels[objects], 1 + ring_colour[objects])
    for ring in (0, 1):  # a ring's own pixels read that ring, and every ring is visible
        assert (s.nearest[s.key_masks[:, ring]] == ring).all()
        assert s.key_masks[:, ring].flatten(1).any(1).all()
    separation = (s.key_centres[:, 0] - s.key_centres[:, 1]).norm(dim=-1)
    assert (separation >= 22.0).float().mean() > 0.9  # the candidates almost always allow the separation
    assert set(s.labels.unique().tolist()) <= set(range(s.config.num_classes))


def test_labels_depend_on_which_ring_is_nearer():
    s = scenes(seed=4, num_colours=3)
    objects = (s.labels > 0) & ~s.key_masks.any(1)
    read = s.nearest[objects]
    assert (read == 0).any() and (read == 1).any()  # both rings are read by some objects


def test_seeded_and_validated():
    assert torch.equal(scenes(seed=5).images, scenes(seed=5).images)
    assert not torch.equal(scenes(seed=5).images, scenes(seed=6).images)
    with pytest.raises(ValueError, match="num_colours"):
        TwoRingScenesConfig(num_images=4, num_colours=1)
    with pytest.raises(ValueError, match="min_separation"):
        TwoRingScenesConfig(num_images=4, min_separation=100)
    assert scenes(seed=1).batch([0, 1])[0].dtype == torch.float32
