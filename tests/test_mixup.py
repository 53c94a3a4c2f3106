"""Mixup as docs/reproduction.md §6 specifies it, against independent references rather than the code's own earlier
self: λ ~ Beta(α, α) per example (distribution tests against scipy.stats and the closed-form moments), the partner
a uniformly random permutation of the batch (a chi-square test over every permutation of a small batch), and the
mixed batch equal to a transcription of the formula in numpy."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from heatedasc.train import draw_epoch_mixup, draw_mixup, mixup_batch

ALPHA = 0.2


N_ROWS = 200_003  # batches of 64 and a last one of 3


@pytest.fixture(scope="module")
def epoch_draws():
    """200,003 per-example draws the way an epoch makes them (batches of 64)."""
    return draw_epoch_mixup(np.random.default_rng(20260601), N_ROWS, 64, ALPHA)


def test_lambda_follows_beta_alpha_alpha(epoch_draws):
    lam, _ = epoch_draws
    # Two-sample Kolmogorov-Smirnov against scipy's Beta(α, α), rounded to float32 as the training step uses λ
    # (Beta(0.2, 0.2) puts ~2 % of its mass within float32's last step of 1): Beta(α, 2α) fails by far.
    reference = stats.beta(ALPHA, ALPHA).rvs(size=len(lam), random_state=np.random.default_rng(1)).astype(np.float32)
    assert stats.ks_2samp(lam, reference).pvalue > 1e-3
    wrong = stats.beta(ALPHA, 2 * ALPHA).rvs(size=len(lam), random_state=np.random.default_rng(1)).astype(np.float32)
    assert stats.ks_2samp(lam, wrong).pvalue < 1e-12
    lam = lam.astype(np.float64)
    # closed-form moments of Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1))
    se = math.sqrt(1 / (4 * (2 * ALPHA + 1)) / len(lam))
    assert abs(lam.mean() - 0.5) < 5 * se
    assert lam.var() == pytest.approx(1 / (4 * (2 * ALPHA + 1)), rel=0.02)


def test_lambda_is_drawn_per_example_not_per_batch(epoch_draws):
    lam, _ = epoch_draws
    batches = lam[: 64 * 3000].reshape(3000, 64)
    assert (batches.std(axis=1) > 0).all()  # never one λ for a whole batch
    # neighbours independent: lag-1 correlation within batches near 0
    assert abs(np.corrcoef(batches[:, :-1].ravel(), batches[:, 1:].ravel())[0, 1]) < 0.01


def test_the_partner_is_a_uniformly_random_permutation_of_its_batch():
    rng = np.random.default_rng(7)
    n, draws = 4, 48_000
    counts = {p: 0 for p in itertools.permutations(range(n))}
    for _ in range(draws):
        _, partner = draw_mixup(rng, n, ALPHA)
        counts[tuple(int(i) for i in partner)] += 1  # KeyError if it is not a permutation
    observed = np.array(list(counts.values()))
    assert observed.min() > 0  # the identity included: a partner may be the example itself, as in the paper's mixup
    assert stats.chisquare(observed).pvalue > 1e-3  # all 24 orders equally likely


def test_epoch_partners_stay_within_their_batch(epoch_draws):
    _, partner = epoch_draws
    for start in range(0, 64 * 50, 64):
        assert sorted(partner[start:start + 64]) == list(range(64))
    assert sorted(partner[-(N_ROWS % 64):]) == list(range(N_ROWS % 64))  # the last, shorter batch


def test_mixed_batch_is_the_formula_in_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 1, 6, 7)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)]
    lam, partner = draw_mixup(rng, 16, ALPHA)
    xm, ym = mixup_batch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(lam), torch.from_numpy(partner))
    lx = lam[:, None, None, None]
    ly = lam[:, None]
    np.testing.assert_allclose(xm.numpy(), lx * x + (1 - lx) * x[partner], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ym.numpy(), ly * y + (1 - ly) * y[partner], rtol=0, atol=1e-7)
