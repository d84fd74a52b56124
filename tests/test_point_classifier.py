"""The point classifier test bed (kit.nn.point_classifier) and the lr_scale of kit.train."""
import pytest
import torch
from torch import nn

from kit.nn.point_classifier import (DEPTHWISE_OPS, FULL_OPS, PointClassifier, make_op, object_points,
                                     optimizer_groups, point_loss, predict_points)
from kit.ops.deform_conv import DeformConv2d
from kit.ops.deformable_kernels import DeformableKernel2d
from kit.train import train


def test_shapes_grid_and_reading_at_unit_centres():
    torch.manual_seed(0)
    model = PointClassifier(5, widths=(8, 16), blocks=(1, 2), ops=("rigid", "dcnv2"), strides=(2, 1)).eval()
    images = torch.rand(2, 3, 32, 32)
    assert model.grid.jump == (4, 4) and model.grid.size == (23, 23)  # 3, 7 (jump 2), 15, 23 (jump 4)
    features = model.features(images)  # (2, 16, 8, 8)
    # the point at the centre of unit (row 2, col 5)'s receptive field reads exactly that unit
    y, x = model.grid.centre(2, 5)
    points = torch.tensor([[[x + 0.5, y + 0.5]], [[x + 0.5, y + 0.5]]])
    logits = model(images, points)
    assert logits.shape == (2, 1, 5)
    torch.testing.assert_close(logits[:, 0], model.classifier(features[:, :, 2, 5]))
    torch.testing.assert_close(model.points_to_grid(points)[0, 0], torch.tensor([2.0, 5.0]))


@pytest.mark.parametrize("op", FULL_OPS + DEPTHWISE_OPS)
def test_every_op_builds_and_runs(op):
    torch.manual_seed(0)
    model = PointClassifier(3, widths=(8, 8), blocks=(1, 1), ops=("rigid", op))
    out = model(torch.rand(2, 3, 24, 24), torch.rand(2, 4, 2) * 24)
    assert out.shape == (2, 4, 3) and torch.isfinite(out).all()
    deformable = op not in ("rigid", "dw-rigid")
    assert (len(model.input_grids()) == 1) == deformable
    assert (len(model.offset_parameters()) > 0) == deformable


def test_make_op_types_and_errors():
    assert isinstance(make_op("dcnv1", 4, 8), DeformConv2d) and not make_op("dcnv1", 4, 8).modulated
    assert isinstance(make_op("dk", 4, 4), DeformableKernel2d)
    assert isinstance(make_op("rigid", 4, 8), nn.Conv2d)
    with pytest.raises(ValueError, match="unknown op"):
        make_op("dcnv3", 4, 4)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        make_op("dk", 4, 8)
    with pytest.raises(ValueError, match="one entry per stage"):
        PointClassifier(3, widths=(8, 16), blocks=(1,), ops=("rigid", "rigid"))
    with pytest.raises(ValueError, match="unknown op"):
        PointClassifier(3, widths=(8,), blocks=(1,), ops=("conv",))
    with pytest.raises(ValueError, match="points must be"):
        PointClassifier(3, widths=(8,), blocks=(1,), ops=("rigid",))(torch.rand(1, 3, 16, 16), torch.rand(1, 2))


def test_loss_ignores_empty_slots_and_prediction_keeps_the_mode():
    torch.manual_seed(0)
    model = PointClassifier(4, widths=(8,), blocks=(1,), ops=("rigid",))
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 0.0, 0.0]], [[4.0, 4.0, 12.0, 16.0], [2.0, 2.0, 6.0, 6.0]]])
    labels = torch.tensor([[1, -1], [2, 3]])
    points, labels = object_points(boxes, labels)
    assert points[1, 0].tolist() == [8.0, 10.0]
    images = torch.rand(2, 3, 16, 16)
    loss = point_loss(model, images, points, labels)["ce"]
    logits = model(images, points)
    expected = nn.functional.cross_entropy(torch.stack([logits[0, 0], logits[1, 0], logits[1, 1]]),
                                           torch.tensor([1, 2, 3]))
    torch.testing.assert_close(loss, expected)
    assert predict_points(model, images, points, batch_size=1).shape == (2, 2) and model.training


def test_offset_groups_get_their_lr_scale_in_kit_train():
    torch.manual_seed(0)
    model = PointClassifier(3, widths=(8,), blocks=(1,), ops=("dcnv2",))
    groups = optimizer_groups(model, offset_lr_scale=0.1)
    assert len(groups) == 2 and groups[1]["lr_scale"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    images, points, labels = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 2) * 16, torch.tensor([[0], [1]])
    train(model, lambda s: None, lambda m, b, s: point_loss(m, images, points, labels), 1, optimizer,
          lr_at=lambda step: 2e-3, progress=False)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-3, 2e-4])
