"""Hard-sample mining and augmentation: plain numpy, no Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from layers import augment
from layers.mining import HardSampleMiner, mix_terms


def labels_for(counts: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def test_same_seed_same_batches_and_different_seed_differs():
    labels = labels_for([5, 3, 1, 8, 4, 6])
    a = HardSampleMiner(labels, batch_size=6, images_per_id=3, seed=7)
    b = HardSampleMiner(labels, batch_size=6, images_per_id=3, seed=7)
    c = HardSampleMiner(labels, batch_size=6, images_per_id=3, seed=8)
    seq_a = [a.next_batch().ids.tolist() for _ in range(10)]
    seq_b = [b.next_batch().ids.tolist() for _ in range(10)]
    seq_c = [c.next_batch().ids.tolist() for _ in range(10)]
    assert seq_a == seq_b
    assert seq_a != seq_c


def test_batch_is_hardest_half_of_k_per_identity_candidates():
    labels = labels_for([4] * 8)
    m = HardSampleMiner(labels, batch_size=4, images_per_id=2, seed=0)
    # Known losses: image i has loss i.
    m.update(np.arange(labels.size), np.arange(labels.size, dtype=float))
    for _ in range(20):
        b = m.next_batch()
        assert b.ids.size == 4
        # The 8 candidates come from 4 identities (2 each); the kept 4 are their hardest.
        kept_scores = m.score(b.ids)
        assert np.all(np.diff(kept_scores) <= 0)  # hardest first


def test_planted_hard_sample_is_picked_more_often_than_an_easy_one():
    labels = labels_for([6] * 10)
    m = HardSampleMiner(labels, batch_size=10, images_per_id=4, seed=1)
    losses = np.full(labels.size, 1.0)
    hard, easy = 13, 14              # both of identity 2
    losses[hard], losses[easy] = 50.0, 0.01
    m.update(np.arange(labels.size), losses)
    picked = np.zeros(labels.size)
    for _ in range(400):
        picked[m.next_batch().ids] += 1
    assert picked[hard] > 3 * max(picked[easy], 1)
    assert picked[easy] == 0         # always among the candidates' easiest half


def test_unseen_images_count_as_hardest():
    labels = labels_for([4] * 4)
    m = HardSampleMiner(labels, batch_size=4, images_per_id=4, seed=0)
    m.update(np.arange(8), np.ones(8))  # identities 0 and 1 known, 2 and 3 unseen
    seen_unknown = 0
    for _ in range(10):
        b = m.next_batch()
        seen_unknown += int(np.sum(b.ids >= 8))
        m.update(b.ids, np.ones(b.ids.size))
    assert np.isfinite(m.score(np.arange(16))).all()


def test_weighted_hsm_weights_follow_loss_with_mean_one():
    labels = labels_for([4] * 4)
    m = HardSampleMiner(labels, batch_size=8, images_per_id=4, weighted=True, seed=0)
    m.update(np.arange(16), np.linspace(1.0, 4.0, 16))
    b = m.next_batch()
    assert b.weights.mean() == pytest.approx(1.0, abs=1e-6)
    s = m.score(b.ids)
    # Weight is proportional to the estimated loss (before clipping, which does not bind here).
    np.testing.assert_allclose(b.weights / b.weights[0], s / s[0], rtol=1e-5)
    plain = HardSampleMiner(labels, batch_size=8, images_per_id=4, weighted=False, seed=0)
    plain.update(np.arange(16), np.linspace(1.0, 4.0, 16))
    assert np.all(plain.next_batch().weights == 1.0)


def test_mixed_loss_ranking_uses_prototxt_weights():
    """The feedback layer's columns mixed by the prototxt's weights decide the ranking."""
    labels = labels_for([2, 2])
    m = HardSampleMiner(labels, batch_size=2, images_per_id=2)
    mixed = mix_terms(np.array([[1.0, 100.0, 0.0], [0.0, 0.0, 1.0]]), [1.0, 0.0, 2.0])
    np.testing.assert_allclose(mixed, [1.0, 2.0])
    m.update(np.array([0, 1]), mixed)
    np.testing.assert_allclose(m.score(np.array([0, 1, 2])), [1.0, 2.0, np.inf])
    with pytest.raises(ValueError, match="2 per-sample loss columns but 3 weights"):
        mix_terms(np.array([[1.0, 2.0]]), [1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="expected 1 per-sample losses"):
        m.update(np.array([0]), np.array([[1.0, 2.0]]))


def test_single_image_identity_and_rounds():
    labels = labels_for([1, 3, 2])
    m = HardSampleMiner(labels, batch_size=3, images_per_id=2, mining=False, seed=3)
    rounds = set()
    for _ in range(12):
        b = m.next_batch()
        assert b.ids.size == 3
        rounds.add(b.round)
    assert max(rounds) >= 3           # several passes over the 3 identities


def test_excluded_images_are_never_drawn():
    labels = labels_for([3, 3])
    m = HardSampleMiner(labels, batch_size=2, images_per_id=2, mining=False, seed=0)
    m.exclude([0, 1])
    for _ in range(20):
        assert not set(m.next_batch().ids.tolist()) & {0, 1}


def test_augment_is_deterministic_and_difficulty_scales_it():
    img = np.random.default_rng(0).integers(0, 256, (128, 48, 3), dtype=np.uint8)
    p1 = augment.draw_params(np.random.default_rng(5), 0.7)
    p2 = augment.draw_params(np.random.default_rng(5), 0.7)
    assert p1 == p2
    a, b = augment.apply(img, 160, 64, p1), augment.apply(img, 160, 64, p2)
    assert a.shape == (160, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    easy = [augment.draw_params(np.random.default_rng(i), 0.0) for i in range(200)]
    hard = [augment.draw_params(np.random.default_rng(i), 1.0) for i in range(200)]
    assert all(p.erase is None and p.zoom == 1.0 for p in easy)
    n_erase = sum(p.erase is not None for p in hard)
    assert 60 < n_erase < 140        # probability 0.5 at full difficulty
    assert max(p.zoom for p in hard) > 1.15
    with pytest.raises(ValueError, match="difficulty"):
        augment.draw_params(np.random.default_rng(0), 1.5)


def test_flip_and_erasing_do_what_they_say():
    img = np.zeros((8, 4, 3), np.uint8)
    img[:, 0] = 255                  # left column white
    flip = augment.AugmentParams(True, 1.0, 0.0, 0.0, None, 0)
    out = augment.apply(img, 8, 4, flip)
    assert out[:, 3].min() == 255 and out[:, 0].max() == 0
    erase = augment.AugmentParams(False, 1.0, 0.0, 0.0, (0.0, 0.5, 0.5, 0.5), 1)
    out = augment.apply(np.zeros((8, 4, 3), np.uint8), 8, 4, erase)
    assert out[:4, 2:].any() and not out[4:].any() and not out[:, :2].any()
