"""kit.data.emblem_scenes: seeded, the class only in the emblem, the emblem inside and off-centre."""
import torch

from kit.data.emblem_scenes import EmblemSceneConfig, crowded_config, generate_emblem_scenes
from kit.data.shapes import to_coco

CONFIG = EmblemSceneConfig(num_images=24, image_size=96, seed=3)


def test_seeded_and_shaped_like_shape_scenes():
    a, b = generate_emblem_scenes(CONFIG), generate_emblem_scenes(CONFIG)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, generate_emblem_scenes(EmblemSceneConfig(num_images=24, image_size=96, seed=4)).images)
    assert a.images.shape == (24, 3, 96, 96) and a.images.dtype == torch.uint8
    images, boxes, labels = a.batch([0, 1])
    assert images.shape == (2, 3, 96, 96) and boxes[0].shape[1] == 4 and labels[0].max() < 6
    coco = to_coco(a)
    assert len(coco["annotations"]) == int((a.labels >= 0).sum()) and len(coco["categories"]) == 6
    assert a.class_names[0] == "red"


def test_class_is_independent_of_the_shape_and_the_emblem_lies_inside_off_centre():
    scenes = generate_emblem_scenes(EmblemSceneConfig(num_images=120, image_size=96, seed=5))
    present = scenes.labels >= 0
    shape, label = scenes.body_shapes[present], scenes.labels[present]
    counts = torch.zeros(3, 6)
    counts.index_put_((shape, label), torch.ones(len(shape)), accumulate=True)
    assert (counts > 0).all()  # every (shape, emblem) pair occurs: the shape does not give the class
    centres, radii, boxes = scenes.emblem_centres[present], scenes.emblem_radii[present], scenes.boxes[present]
    assert (centres >= boxes[:, :2]).all() and (centres <= boxes[:, 2:]).all()
    half = (boxes[:, 2:] - boxes[:, :2]) / 2
    offset = ((centres - (boxes[:, :2] + half)) / half).norm(dim=1)
    assert (offset >= 0.35).float().mean() > 0.9  # off-centre for almost every object
    assert (radii >= 1).all()
    masks = scenes.masks[present]
    x, y = centres.long().unbind(1)
    assert masks[torch.arange(len(x)), y, x].all()  # the emblem's centre is on the object


def test_emblem_pixels_carry_the_class_hue():
    scenes = generate_emblem_scenes(CONFIG)
    image = scenes.images[0].float() / 255
    for slot in torch.where(scenes.labels[0] >= 0)[0]:
        x, y = scenes.emblem_centres[0, slot]
        grid = torch.arange(96) + 0.5
        disc = ((grid[None] - x) ** 2 + (grid[:, None] - y) ** 2 <= scenes.emblem_radii[0, slot] ** 2) & scenes.masks[0, slot]
        colour = image[:, disc].amax(1)  # the bright (unstriped) pixels
        assert colour.max() - colour.min() > 0.4  # saturated, unlike the near-white body


def test_crowded_config_packs_more_objects():
    crowded = generate_emblem_scenes(crowded_config(CONFIG, num_images=24, seed=9))
    plain = generate_emblem_scenes(CONFIG)
    assert (crowded.labels >= 0).sum(1).float().mean() > 1.5 * (plain.labels >= 0).sum(1).float().mean()
