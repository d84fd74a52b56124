"""kit.data.longtail_scenes: long-tailed frequencies, LVIS groups from counts, federated fields, LVIS json."""
import json
import logging

import pytest
import torch

from kit.data.longtail_scenes import (LongTailSceneConfig, aux_view, class_groups, class_shape_family, generate,
                                      image_counts, to_lvis)
from tests._lvis_reference import need_lvis

logging.getLogger("lvis").setLevel(logging.ERROR)
CONFIG = LongTailSceneConfig(800, image_size=48, seed=1)


@pytest.fixture(scope="module")
def scenes():
    return generate(CONFIG)


def test_classes_are_distinct_shape_hue_pairs():
    shape, family = class_shape_family(30)
    assert len(set(zip(shape.tolist(), family.tolist()))) == 30
    assert set(family[:10].tolist()) == {0, 1, 2}  # the ten most frequent classes span every hue family


def test_groups_follow_thresholds_of_actual_image_counts(scenes):
    rare_max, common_max = CONFIG.thresholds()
    assert (rare_max, common_max) == (8, 80)
    counts = scenes.presence().sum(0)
    groups = class_groups(scenes)
    for n, g in zip(counts.tolist(), groups):
        assert g == ("r" if n <= rare_max else "c" if n <= common_max else "f")
    assert {g: groups.count(g) for g in "rcf"} == {g: sum(1 for x in groups if x == g) for g in "rcf"}
    assert all(groups.count(g) >= 3 for g in "rcf"), groups


def test_image_frequencies_are_long_tailed_as_declared(scenes):
    counts = image_counts(scenes, truth=True).double()
    expected = CONFIG.num_images * CONFIG.class_probabilities()
    big = expected >= 30
    ratio = counts[big] / expected[big]  # occlusion and the slot limit lose a few
    assert ((ratio > 0.6) & (ratio < 1.3)).all(), ratio
    head, tail = counts[:5].sum(), counts[-10:].sum()
    assert head > 20 * tail
    rank = torch.argsort(torch.argsort(-counts)).double()
    assert torch.corrcoef(torch.stack([rank, torch.arange(30.0, dtype=torch.float64)]))[0, 1] > 0.9


def test_federated_fields_are_consistent(scenes):
    truth, annotated = scenes.presence(truth=True), scenes.presence()
    assert not (scenes.neg & truth).any()
    assert (annotated == truth).all()  # a not-exhaustive class keeps at least one instance
    c = CONFIG.num_classes
    per_class = lambda labels: torch.stack([(labels == k).sum(1) for k in range(c)], 1)  # (B, C)
    fewer = per_class(scenes.labels) < per_class(scenes.truth_labels)
    assert torch.equal(fewer, scenes.not_exhaustive) and scenes.not_exhaustive.any()
    kept = scenes.labels >= 0
    assert torch.equal(scenes.labels[kept], scenes.truth_labels[kept])
    absent = (~truth).sum()
    assert 0.4 < scenes.neg.sum() / absent < 0.6  # neg_prob 0.5


def test_no_missing_annotation_when_p_miss_is_zero():
    s = generate(LongTailSceneConfig(100, image_size=32, num_classes=8, p_miss=0.0, neg_prob=1.0, seed=2))
    assert torch.equal(s.labels, s.truth_labels) and not s.not_exhaustive.any()
    assert torch.equal(s.neg, ~s.presence(truth=True))
    assert to_lvis(s) == to_lvis(s, truth=True)


def test_deterministic_and_seeded():
    config = LongTailSceneConfig(40, image_size=32, num_classes=12, seed=4)
    a, b = generate(config, use_cache=False), generate(config)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.tensor_fields())
    c = generate(LongTailSceneConfig(40, image_size=32, num_classes=12, seed=5), use_cache=False)
    assert not torch.equal(a.images, c.images)


def test_to_lvis_loads_in_lvis(scenes, tmp_path):
    lvis = need_lvis()
    groups = class_groups(scenes)
    for truth in (False, True):
        data = to_lvis(scenes, groups, truth=truth)
        path = tmp_path / f"gt{truth}.json"
        path.write_text(json.dumps(data))
        loaded = lvis.LVIS(str(path))
        assert len(loaded.get_img_ids()) == len(scenes) and len(loaded.get_cat_ids()) == 30
        assert [c["frequency"] for c in data["categories"]] == groups
        labels = scenes.truth_labels if truth else scenes.labels
        assert len(data["annotations"]) == int((labels >= 0).sum())
        assert [c["image_count"] for c in data["categories"]] == image_counts(scenes, truth).tolist()
    assert any(img["not_exhaustive_category_ids"] for img in to_lvis(scenes)["images"])


def test_aux_view_is_exhaustive_over_frequent_classes(scenes):
    groups = class_groups(scenes)
    frequent = torch.tensor([g == "f" for g in groups])
    aux = aux_view(scenes, groups)
    want = torch.where((scenes.truth_labels >= 0) & frequent[scenes.truth_labels.clamp(min=0)],
                       scenes.truth_labels, -1)
    assert torch.equal(aux.labels, want) and not aux.not_exhaustive.any()
    assert torch.equal(aux.neg, frequent[None] & ~aux.presence())
    assert torch.equal(aux.images, scenes.images)
    images, boxes, labels = aux.batch([0, 1])
    assert images.shape == (2, 3, 48, 48) and all(frequent[l].all() for l in labels)
