"""The paper's training maths (docs/reproduction.md §6): Adadelta with Keras's values, the Keras-style plateau
schedule, the Keras L2 term, and mixup's draws and mixing. Pure functions of their inputs: no I/O, no device policy."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch

from heatedasc.model import ASCNet


def l2_penalty(model: ASCNet, weight: float) -> torch.Tensor:
    """Keras L2 regulariser: weight·Σw² over conv and dense kernels only (gradient 2·weight·w)."""
    return cast(torch.Tensor, weight * sum(w.pow(2).sum() for w in model.kernel_parameters()))  # sum(): Tensor | 0


def draw_mixup(rng: np.random.Generator, batch_size: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-example λ ~ Beta(α, α) and a partner permutation of the batch."""
    lam = rng.beta(alpha, alpha, size=batch_size).astype(np.float32)
    partner = rng.permutation(batch_size)
    return lam, partner


def draw_epoch_mixup(
    rng: np.random.Generator, n_rows: int, batch_size: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """An epoch's mixup draws at once: λ [n_rows] float32 and partner [n_rows] int64 (indices within each batch).

    Batch by batch through draw_mixup, so the generator gives the same numbers in the same order as
    per-batch draws; the loop copies them to the device once per epoch instead of twice per batch.
    """
    lams, partners = [], []
    for start in range(0, n_rows, batch_size):
        lam, partner = draw_mixup(rng, min(batch_size, n_rows - start), alpha)
        lams.append(lam)
        partners.append(partner)
    if not lams:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return np.concatenate(lams), np.concatenate(partners).astype(np.int64, copy=False)


def mixup_batch(
    x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix features x [N, ...] and soft targets y [N, C] with per-example weights lam [N]."""
    lam_x = lam.view(-1, *([1] * (x.dim() - 1)))
    lam_y = lam.view(-1, 1)
    return lam_x * x + (1 - lam_x) * x[partner], lam_y * y + (1 - lam_y) * y[partner]


class Adadelta(torch.optim.Adadelta):
    """torch's Adadelta; on the CPU its square roots are ATen's rsqrt (1/√x from a correctly rounded √ and
    division) instead of torch's sqrt, which on a CPU is MKL's and follows MKL_CBWR only on Intel CPUs
    (heatedasc.pinning). The same update, u = g·√(d + ε)/√(a + ε), to float32 rounding; the same state."""

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        if any(p.device.type != "cpu" for p in params) or any(
            g["weight_decay"] or g["maximize"] or g.get("differentiable") for g in self.param_groups
        ):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grad, square_avg, acc_delta = p.grad, state["square_avg"], state["acc_delta"]
                square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
                # delta = g · √(d + ε) / √(a + ε) = g · rsqrt(a + ε) / rsqrt(d + ε)
                delta = grad * square_avg.add(eps).rsqrt_()
                delta.div_(acc_delta.add(eps).rsqrt_())
                acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
                p.add_(delta, alpha=-lr)
        return loss


def make_optimizer(model: torch.nn.Module, train_cfg: dict) -> torch.optim.Adadelta:
    """Adadelta with the Keras values of train_cfg (lr, rho, eps); weight decay is the separate Keras L2 term."""
    return Adadelta(model.parameters(), lr=float(train_cfg["lr"]), rho=float(train_cfg["rho"]),
                    eps=float(train_cfg["eps"]), weight_decay=0.0)


def make_plateau_scheduler(
    optimizer: torch.optim.Optimizer, *, factor: float, patience: int, min_delta: float
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """ReduceLROnPlateau on a maximised accuracy with Keras semantics.

    Keras reduces once `patience` epochs in a row fail to beat best + min_delta; torch waits for
    `patience + 1`, so torch gets patience − 1 (the paper trained with Keras).
    """
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=factor, patience=max(int(patience) - 1, 0),
        threshold=min_delta, threshold_mode="abs", eps=0.0,  # Keras has no minimum step: every cut happens
    )
