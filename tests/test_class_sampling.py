"""kit.data.sampling's class-aware samplers: repeat factors as LVIS defines them, pure functions of the step."""
import math

import torch

from kit.data.class_sampling import class_aware_sampler, repeat_factor_sampler, repeat_factors
from kit.data.sampling import epoch_sampler


def long_tail_presence(n=200, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor([0.6, 0.3, 0.1, 0.05, 0.02, 0.01])[:c]
    return torch.rand((n, c), generator=g) < q


def test_repeat_factors_follow_lvis_formula():
    presence = long_tail_presence()
    t = 0.1
    f = presence.double().mean(0)
    r_c = torch.clamp(torch.sqrt(t / f), min=1)
    for i in range(len(presence)):
        expected = max([1.0] + [float(r_c[c]) for c in torch.nonzero(presence[i]).flatten()])
        assert math.isclose(float(repeat_factors(presence, t)[i]), expected, rel_tol=1e-12)


def test_expected_repeats_match_factors():
    presence = long_tail_presence()
    factors = repeat_factors(presence, 0.1)
    sampler = repeat_factor_sampler(presence, 1, seed=3, threshold=0.1)
    steps = int(200 * factors.mean() * 60)  # about 60 epochs, one image per step
    counts = torch.bincount(torch.cat([sampler(s) for s in range(steps)]), minlength=200).double()
    epochs = steps / float(factors.sum())
    assert torch.allclose(counts / epochs, factors, atol=0.35)
    assert abs(float((counts / epochs).mean() - factors.mean())) < 0.02


def test_repeat_factor_sampler_is_plain_epochs_with_uniform_frequencies():
    presence = torch.ones(50, 3, dtype=torch.bool)
    rfs, plain = repeat_factor_sampler(presence, 8, seed=5, threshold=0.5), epoch_sampler(50, 8, seed=5)
    assert all(torch.equal(rfs(s), plain(s)) for s in range(20))


def test_samplers_are_pure_functions_of_the_step():
    presence = long_tail_presence()
    a, b = repeat_factor_sampler(presence, 7, 1, 0.1), repeat_factor_sampler(presence, 7, 1, 0.1)
    late = [a(s) for s in (90, 3, 41)]
    assert all(torch.equal(x, b(s)) for x, s in zip(late, (90, 3, 41)))
    c, d = class_aware_sampler(presence, 16, 2), class_aware_sampler(presence, 16, 2)
    assert torch.equal(c(12), d(12)) and not torch.equal(c(12), c(13))


def test_class_aware_draws_images_holding_their_class_and_classes_uniformly():
    presence = long_tail_presence()
    sampler = class_aware_sampler(presence, 64, seed=0, return_classes=True)
    drawn = [sampler(s) for s in range(200)]
    images, classes = torch.cat([i for i, _ in drawn]), torch.cat([c for _, c in drawn])
    assert presence[images, classes].all()
    share = torch.bincount(classes, minlength=6).double() / len(classes)
    held = presence.any(0)
    assert torch.allclose(share[held], torch.full((int(held.sum()),), 1 / int(held.sum()), dtype=torch.float64), atol=0.01)
    rare = int(torch.nonzero(presence[:, 5]).flatten()[0]) if presence[:, 5].any() else None
    if rare is not None:  # every image of a rare class is drawn
        assert set(images[classes == 5].tolist()) == set(torch.nonzero(presence[:, 5]).flatten().tolist())
