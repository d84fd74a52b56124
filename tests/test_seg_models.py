"""kit.seg.models: the tiny FCN's shapes, its loss (cross-entropy with ignore 255) and predict."""
import torch
import torch.nn.functional as F

from kit.data.seg_scenes import SegSceneConfig, generate
from kit.runtime import seed_everything
from kit.seg.models import IGNORE_INDEX, TinyFCN, segmentation_loss


def test_logits_cover_every_pixel_with_background_plus_the_classes():
    seed_everything(0)
    model = TinyFCN(5)
    for size in ((64, 64), (48, 80), (37, 51)):  # any size, strides need not divide it
        assert model(torch.rand(2, 3, *size)).shape == (2, 6, *size)
    assert model.backbone.strides == [4, 8, 16, 32]


def test_loss_is_cross_entropy_over_the_pixels_not_ignored():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    targets = torch.randint(0, 4, (2, 8, 8), generator=g)
    targets[0, :3] = IGNORE_INDEX
    assert torch.allclose(segmentation_loss(logits, targets), F.cross_entropy(logits, targets, ignore_index=255))
    by_hand = -logits.log_softmax(1).gather(1, targets.clamp(max=3)[:, None])[:, 0][targets != 255].mean()
    assert torch.allclose(segmentation_loss(logits, targets), by_hand)


def test_an_all_ignored_batch_gives_zero_loss_and_zero_gradients():
    seed_everything(0)
    model = TinyFCN(3)
    loss = model.loss(torch.rand(2, 3, 32, 32), torch.full((2, 32, 32), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_predict_gives_label_maps_in_eval_mode_and_restores_training_mode():
    seed_everything(0)
    model = TinyFCN(3).train()
    images = torch.rand(2, 3, 32, 32)
    labels = model.predict(images)
    assert labels.shape == (2, 32, 32) and labels.dtype == torch.long and model.training
    model.eval()
    assert torch.equal(labels, model(images).argmax(1))


def test_a_few_steps_on_one_batch_lower_the_loss():
    ds = generate(SegSceneConfig(num_images=8, image_size=32, regimes=("large",), ignore_band=1, seed=7), use_cache=False)
    images, targets = ds.batch(torch.arange(8))
    seed_everything(0)
    model = TinyFCN(ds.config.num_labels - 1)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        loss = model.loss(images, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
