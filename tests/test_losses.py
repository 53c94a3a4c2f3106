"""Heated-up softmax, CE (eq. 1) and focal loss (eq. 2) on soft targets (docs/reproduction.md §5)."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heatedasc.losses import cross_entropy, focal_loss, heated_log_softmax, heated_softmax, make_loss

torch.set_num_threads(1)


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_focal_eq2_against_hand_computation():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    T = 2.0
    p = _softmax([2.0 / T, 0.0, -1.0 / T])  # [0.6285, 0.2312, 0.1402]
    y = torch.tensor([[0.7, 0.3, 0.0]])
    expected = -(0.7 * (1 - p[0]) * math.log(p[0]) + 0.3 * (1 - p[1]) * math.log(p[1]))
    assert focal_loss(z, y, T, gamma=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.4585, abs=1e-4)  # 0.7·0.3715·0.4644 + 0.3·0.7688·1.4644
    # gamma = 2 squares the modulating factor
    expected2 = -(0.7 * (1 - p[0]) ** 2 * math.log(p[0]) + 0.3 * (1 - p[1]) ** 2 * math.log(p[1]))
    assert focal_loss(z, y, T, gamma=2.0).item() == pytest.approx(expected2, rel=1e-6)


def test_target_prob_form_against_hand_computation():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    p = _softmax([1.0, 0.0, -0.5])
    y = torch.tensor([[0.7, 0.3, 0.0]])
    q = 0.7 * p[0] + 0.3 * p[1]
    expected = -(1 - q) * math.log(q)
    assert focal_loss(z, y, 2.0, gamma=1.0, form="target_prob").item() == pytest.approx(expected, rel=1e-6)


def test_target_prob_form_keeps_its_gradient_when_q_underflows():
    # q = p_target ≈ e^-200 underflows float32; a clamp would give a zero gradient and a wrong loss
    z = torch.tensor([[0.0, 200.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0]])
    loss = focal_loss(z, y, 1.0, gamma=1.0, form="target_prob")
    assert loss.item() == pytest.approx(200.0, rel=1e-4)  # −(1 − q) log q with log q ≈ −200
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 0].item() == pytest.approx(-1.0, abs=1e-4)


def test_cross_entropy_matches_torch_and_is_batch_mean():
    torch.manual_seed(0)
    z = torch.randn(5, 10)
    y = torch.softmax(torch.randn(5, 10), dim=1)
    T = 3.0
    assert cross_entropy(z, y, T).item() == pytest.approx(F.cross_entropy(z / T, y).item(), rel=1e-6)
    per_example = [cross_entropy(z[i:i + 1], y[i:i + 1], T).item() for i in range(5)]
    assert cross_entropy(z, y, T).item() == pytest.approx(sum(per_example) / 5, rel=1e-6)


def test_gamma_zero_is_cross_entropy():
    torch.manual_seed(1)
    z = torch.randn(6, 10) * 3
    y = torch.softmax(torch.randn(6, 10), dim=1)
    ce = cross_entropy(z, y, 5.0)
    assert torch.allclose(focal_loss(z, y, 5.0, gamma=0.0, form="eq2"), ce)
    onehot = F.one_hot(torch.arange(6) % 10, 10).float()
    assert torch.allclose(focal_loss(z, onehot, 5.0, gamma=0.0, form="target_prob"), cross_entropy(z, onehot, 5.0))


def test_forms_agree_for_one_hot_and_differ_under_mixup():
    torch.manual_seed(2)
    z = torch.randn(8, 10) * 2
    onehot = F.one_hot(torch.randint(0, 10, (8,)), 10).float()
    assert torch.allclose(focal_loss(z, onehot, 1.0, 1.0, "eq2"), focal_loss(z, onehot, 1.0, 1.0, "target_prob"))
    lam = 0.6
    mixed = lam * onehot + (1 - lam) * onehot.roll(1, dims=0)
    a = focal_loss(z, mixed, 1.0, 1.0, "eq2").item()
    b = focal_loss(z, mixed, 1.0, 1.0, "target_prob").item()
    assert abs(a - b) > 1e-3


@pytest.mark.parametrize("name", ["ce", "focal"])
def test_temperature_scales_gradient_as_eq3(name):
    torch.manual_seed(3)
    T = 7.0
    z = (torch.randn(4, 10) * 5).requires_grad_()
    y = torch.softmax(torch.randn(4, 10), dim=1)
    make_loss(name, temperature=T, gamma=1.0)(z, y).backward()
    z_prime = (z.detach() / T).requires_grad_()
    make_loss(name, temperature=1.0, gamma=1.0)(z_prime, y).backward()
    assert torch.allclose(z.grad, z_prime.grad / T, atol=1e-7)
    assert not torch.allclose(z.grad, z_prime.grad)  # T really changes the gradient


def test_heated_softmax_keeps_argmax_and_flattens():
    torch.manual_seed(4)
    z = torch.randn(50, 10) * 4
    for T in (1.0, 5.0, 35.0):
        p = heated_softmax(z, T)
        assert torch.equal(p.argmax(dim=1), z.argmax(dim=1))
        assert torch.allclose(p.sum(dim=1), torch.ones(50))
        assert torch.allclose(heated_log_softmax(z, T), torch.log_softmax(z / T, dim=1))
    # higher T gives a lower top probability
    assert (heated_softmax(z, 35.0).max(dim=1).values < heated_softmax(z, 1.0).max(dim=1).values).all()


def test_make_loss_errors_name_the_key():
    with pytest.raises(ValueError, match=re.escape("loss must be one of ('focal', 'ce'), got 'mse'")):
        make_loss("mse", temperature=1.0)
    with pytest.raises(ValueError, match=re.escape("temperature must be > 0, got 0.0")):
        make_loss("ce", temperature=0.0)
    with pytest.raises(ValueError, match=re.escape("temperature must be > 0, got -1")):
        make_loss("focal", temperature=-1)
    with pytest.raises(ValueError, match=re.escape(
            "loss.focal_form must be one of ('eq2', 'target_prob'), got 'paper'")):
        make_loss("focal", temperature=1.0, focal_form="paper")
    with pytest.raises(ValueError, match="loss.focal_form"):
        focal_loss(torch.zeros(1, 3), torch.ones(1, 3) / 3, 1.0, 1.0, form="x")
    with pytest.raises(ValueError, match="temperature"):
        heated_softmax(torch.zeros(1, 3), 0.0)


def test_make_loss_builds_the_named_loss_with_its_settings():
    """What the training loop calls: each name gives that loss, with T, γ and the focal form passed through."""
    torch.manual_seed(0)
    logits = torch.randn(6, 10)
    soft = torch.softmax(torch.randn(6, 10), dim=1)  # mixup-like targets: the two focal forms differ
    assert make_loss("ce", temperature=3.0)(logits, soft) == cross_entropy(logits, soft, 3.0)
    for form in ("eq2", "target_prob"):
        got = make_loss("focal", temperature=3.0, gamma=2.0, focal_form=form)(logits, soft)
        assert got == focal_loss(logits, soft, 3.0, 2.0, form), form
    # the paper's γ = 1 (docs/reproduction.md §5) is the default
    assert make_loss("focal", temperature=3.0)(logits, soft) == focal_loss(logits, soft, 3.0, 1.0, "eq2")


def test_heated_log_softmax_normalises_over_the_class_axis_whatever_the_rank():
    """log p = log softmax(z / T) over the last axis (the classes), also for a [batch, time, classes] tensor."""
    logits = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4) / 7.0
    z = logits.numpy() / 2.0
    expected = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(heated_log_softmax(logits, 2.0).numpy(), expected, rtol=0, atol=1e-12)
