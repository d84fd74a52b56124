"""kit.data.cbgs: DS sampling's invariants (CBGS, arXiv 1908.09492)."""
import torch

from kit.data.cbgs import class_balanced_indices, draws_per_class


def random_presence(seed, n=200, rates=(0.95, 0.6, 0.3, 0.1, 0.03)):
    presence = torch.rand(n, len(rates), generator=torch.Generator().manual_seed(seed)) < torch.tensor(rates)
    presence[0] = True
    return presence


def test_every_class_gets_floor_ndup_over_c_draws_of_samples_that_contain_it():
    for seed in range(5):
        presence = random_presence(seed)
        per_class = draws_per_class(presence)
        assert per_class == int(presence.sum()) // presence.shape[1]
        picked = class_balanced_indices(presence, seed)
        assert len(picked) == per_class * presence.shape[1]
        for c in range(presence.shape[1]):
            block = picked[c * per_class:(c + 1) * per_class]
            assert bool(presence[block, c].all())  # each draw for class c contains class c


def test_sample_membership_not_instances():
    # one sample with many instances of class 1 counts once: n_1 = 1
    presence = torch.tensor([[True, True], [True, False], [True, False], [True, False]])
    assert draws_per_class(presence) == (4 + 1) // 2
    picked = class_balanced_indices(presence, 0)
    assert picked[2:].tolist() == [0, 0]  # class 1's draws can only be sample 0


def test_rare_class_share_rises_to_at_least_one_over_c():
    presence = random_presence(1)
    picked = class_balanced_indices(presence, 0)
    before = presence.float().mean(0)
    after = presence[picked].float().mean(0)
    assert bool((after >= 1 / presence.shape[1] - 1e-9).all())
    assert float(after[-1]) > 3 * float(before[-1])


def test_uniform_membership_is_a_uniform_resample():
    presence = torch.ones(300, 3, dtype=torch.bool)
    picked = class_balanced_indices(presence, 4)
    assert len(picked) == 900
    counts = torch.bincount(picked, minlength=300).float()
    assert abs(float(counts.mean()) - 3.0) < 1e-9 and float(counts.std()) < 2.5  # about Poisson(3)


def test_seeded_and_deterministic():
    presence = random_presence(2)
    assert torch.equal(class_balanced_indices(presence, 7), class_balanced_indices(presence, 7))
    assert not torch.equal(class_balanced_indices(presence, 7), class_balanced_indices(presence, 8))


def test_absent_class_gets_no_draws():
    presence = torch.tensor([[True, False], [True, False]])
    picked = class_balanced_indices(presence, 0)
    assert len(picked) == draws_per_class(presence) == 1
