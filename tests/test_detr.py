import math

import pytest
import torch

from kit.det.deformable_detr import DeformableDETR, inverse_sigmoid
from kit.det.detr import DETR
from kit.det.hungarian import set_loss, targets_from_pixels
from kit.det.set_detector import postprocess_set
from kit.det.transformer import sine_position_embedding
from kit.ops.attention import recording


def small(cls, **kw):
    torch.manual_seed(0)
    return cls(num_classes=3, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=2, ffn_dim=32, num_queries=5,
               widths=(4, 8, 8, 16), **kw)


@pytest.mark.parametrize("cls,width", [(DETR, 4), (DeformableDETR, 3)])
def test_outputs_have_the_set_shapes(cls, width):
    model = small(cls)
    out = model(torch.rand(2, 3, 64, 64))
    assert out["logits"].shape == (2, 5, width) and out["boxes"].shape == (2, 5, 4)
    assert len(out["aux"]) == 1 and out["aux"][0]["boxes"].shape == (2, 5, 4)
    assert (out["boxes"] > 0).all() and (out["boxes"] < 1).all()


def test_deformable_detr_levels_reference_points_and_init():
    model = small(DeformableDETR, strides=(8, 16, 32, 64))
    out = model(torch.rand(1, 3, 128, 128))
    assert out["spatial_shapes"].tolist() == [[16, 16], [8, 8], [4, 4], [2, 2]]
    assert out["reference_points"].shape == (1, 5, 2)
    assert torch.allclose(model.class_embed.bias, torch.full((3,), -math.log(99)))  # prior 0.01
    # the box head starts at its reference point with w = h = sigmoid(-2)
    assert torch.allclose(out["aux"][0]["boxes"][..., :2], out["reference_points"], atol=1e-5)
    assert torch.allclose(out["aux"][0]["boxes"][..., 2:], torch.full((1, 5, 2), torch.sigmoid(torch.tensor(-2.0)).item()))


def test_detr_records_dense_cross_attention_over_its_map():
    model = small(DETR, feature_stride=16)
    with recording(model.decoder[-1]):
        out = model(torch.rand(1, 3, 64, 64))
    assert model.decoder[-1].record is False and model.decoder[0].last == {}
    attention = model.decoder[-1].last["attention"]  # (B, heads, Q, S)
    assert out["feature_shape"] == (4, 4) and attention.shape == (1, 2, 5, 16)
    assert torch.allclose(attention.sum(-1), torch.ones(1, 2, 5), atol=1e-5)


@pytest.mark.parametrize("cls", [DETR, DeformableDETR])
def test_queries_are_a_set_permuting_them_permutes_the_outputs_and_keeps_the_loss(cls):
    """No query has a fixed role: reordering the learned queries reorders the predictions, and the
    Hungarian set loss does not change (a positional leak between queries, or a loss that pairs
    query i with object i, breaks this)."""
    model = small(cls, **({"feature_stride": 8} if cls is DETR else {"strides": (4, 8)})).eval()
    images = torch.rand(2, 3, 32, 32)
    targets = targets_from_pixels([torch.tensor([[4.0, 4, 20, 15]]), torch.tensor([[10.0, 15, 30, 30], [1, 1, 6, 6]])],
                                  [torch.tensor([1]), torch.tensor([0, 2])], 32)
    with torch.no_grad():
        out = model(images)
        order = torch.tensor([3, 0, 4, 1, 2])
        model.query_embed.weight.copy_(model.query_embed.weight[order])
        permuted = model(images)
    for key in ("logits", "boxes"):
        torch.testing.assert_close(permuted[key], out[key][:, order], atol=1e-5, rtol=1e-5)
    loss, loss_permuted = (set_loss(o, targets, 3, mode=model.class_mode) for o in (out, permuted))
    for term in ("cls", "l1", "giou", "aux"):
        torch.testing.assert_close(loss_permuted[term], loss[term], atol=1e-5, rtol=1e-5)


def test_detect_is_postprocess_of_the_eval_forward_and_keeps_the_mode():
    model = small(DETR).train()
    images = torch.rand(2, 3, 64, 64)
    detections = model.detect(images, topk=3)
    assert model.training
    with torch.no_grad():
        out = model.eval()(images)
    expected = postprocess_set(out["logits"], out["boxes"], 64, "softmax", topk=3)
    for got, want in zip(detections, expected):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], want[key])


def test_sine_embedding_and_inverse_sigmoid():
    pos = sine_position_embedding(3, 4, 8)
    assert pos.shape == (12, 8)
    # first channel: sin of the y coordinate (i + 0.5) / H * 2 pi, constant along a row
    assert torch.allclose(pos[:4, 0], torch.full((4,), math.sin(0.5 / 3 * 2 * math.pi)))
    assert torch.allclose(pos[::4, 4], torch.full((3,), math.sin(0.5 / 4 * 2 * math.pi)))  # x half
    x = torch.tensor([0.0, 0.2, 0.5, 1.0])
    assert torch.allclose(inverse_sigmoid(x)[1:3].sigmoid(), x[1:3])
    assert torch.isfinite(inverse_sigmoid(x)).all()


def test_postprocess_takes_the_top_query_class_pairs_in_pixels():
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 1, 0], logits[0, 2, 1] = 3.0, 2.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 0.2], [0.5, 0.5, 1.0, 1.0]]])
    (det,) = postprocess_set(logits, boxes, 100, "focal", topk=2)
    assert det["labels"].tolist() == [0, 1]
    assert torch.allclose(det["boxes"], torch.tensor([[0.0, 40, 50, 60], [0, 0, 100, 100]]))
    (soft,) = postprocess_set(torch.cat([logits, torch.zeros(1, 3, 1)], -1), boxes, 100, "softmax", topk=4)
    assert soft["scores"].shape == (4,) and (soft["scores"][:-1] >= soft["scores"][1:]).all()


def test_postprocess_drops_detections_that_are_not_finite():
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 1, 0], logits[0, 2, 1] = 3.0, 2.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [float("nan"), 0.5, 0.5, 0.2], [0.5, 0.5, float("inf"), 1.0]]])
    (det,) = postprocess_set(logits, boxes, 100, "focal", topk=6)
    assert len(det["boxes"]) == len(det["scores"]) == len(det["labels"]) == 2  # only query 0's two classes
    assert torch.isfinite(det["boxes"]).all()
    assert torch.allclose(det["boxes"], torch.tensor([[40.0, 40, 60, 60]]).expand(2, 4))
    logits[0, 0, 1] = float("nan")
    (det,) = postprocess_set(logits, boxes, 100, "focal", topk=6)
    assert det["labels"].tolist() == [0] and torch.isfinite(det["scores"]).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="strides"):
        small(DeformableDETR, strides=(16, 8))
    with pytest.raises(ValueError, match="64"):
        small(DeformableDETR, strides=(8, 128))
    with pytest.raises(ValueError, match="feature stride"):
        small(DETR, feature_stride=12)
    with pytest.raises(ValueError, match="class_mode"):
        small(DETR, class_mode="ce")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        small(DETR)(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 4"):
        sine_position_embedding(2, 2, 6)
