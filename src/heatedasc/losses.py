"""Heated-up softmax (paper eq. 3) with cross-entropy (eq. 1) and focal loss (eq. 2) on soft targets."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("focal", "ce")
FOCAL_FORMS = ("eq2", "target_prob")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def heated_log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(z / T) along the class axis."""
    _check_temperature(temperature)
    return F.log_softmax(logits / temperature, dim=-1)


def heated_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(z / T) along the class axis (ATen's softmax: torch's exp() on a CPU is MKL's, which rounds
    differently on non-Intel CPUs; heatedasc.pinning)."""
    _check_temperature(temperature)
    return F.softmax(logits / temperature, dim=-1)


def cross_entropy(logits: torch.Tensor, targets_soft: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1: mean over the batch of −Σ_j y_j log p_j with p = softmax(z/T); y may be soft."""
    log_p = heated_log_softmax(logits.float(), temperature)
    return -(targets_soft * log_p).sum(dim=-1).mean()


def focal_loss(
    logits: torch.Tensor,
    targets_soft: torch.Tensor,
    temperature: float,
    gamma: float,
    form: str = "eq2",
) -> torch.Tensor:
    """Focal loss on p = softmax(z/T), mean over the batch.

    eq2: −Σ_j (1 − p_j)^γ y_j log p_j (paper eq. 2).
    target_prob: −(1 − q)^γ log q with q = Σ_j y_j p_j (base system's variant; equal for one-hot y).
    """
    log_p = heated_log_softmax(logits.float(), temperature)
    p = heated_softmax(logits.float(), temperature)
    if form == "eq2":
        return -(((1.0 - p) ** gamma) * targets_soft * log_p).sum(dim=-1).mean()
    if form == "target_prob":
        # log q = logsumexp_j(log p_j + log y_j): exact in the log domain, so a tiny q keeps its gradient
        log_q = torch.logsumexp(log_p + targets_soft.float().log(), dim=-1)
        return -(((1.0 - log_q.exp()) ** gamma) * log_q).mean()
    raise ValueError(f"loss.focal_form must be one of {FOCAL_FORMS}, got {form!r}")


def make_loss(
    name: str, *, temperature: float, gamma: float = 1.0, focal_form: str = "eq2"
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return loss(logits, targets_soft) for `name` in {focal, ce}; validates everything up front."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if name == "ce":
        return lambda logits, targets: cross_entropy(logits, targets, temperature)
    if focal_form not in FOCAL_FORMS:
        raise ValueError(f"loss.focal_form must be one of {FOCAL_FORMS}, got {focal_form!r}")
    return lambda logits, targets: focal_loss(logits, targets, temperature, gamma, focal_form)
