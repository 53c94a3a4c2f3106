"""The training loop: batched forward passes on the device (BatchRunner), one epoch (train_epoch), and the
epochs of a run with a checkpoint after each (fit)."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from heatedasc import runtime
from heatedasc.metrics import device_accuracies
from heatedasc.model import ASCNet
from heatedasc.train.checkpoint import TrainState, save_checkpoint
from heatedasc.train.maths import draw_epoch_mixup, l2_penalty, make_optimizer, make_plateau_scheduler, mixup_batch
from heatedasc.train.recipe import RunSpec

log = logging.getLogger("heatedasc.train")  # one logger for the package: job logs name it


class BatchRunner:
    """Holds the device tensors and does batched forward passes (through torch.compile when compile_mode is set)."""

    def __init__(self, model: ASCNet, device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool,
                 compile_mode: str | None = None):
        self.model, self.device, self.amp_dtype, self.channels_last = model, device, amp_dtype, channels_last
        self.compile_mode = compile_mode
        self._loss_step, self._forward_step = self._batch_loss, self._forward
        if compile_mode is not None:
            self._loss_step = runtime.compile_fn(self._batch_loss, compile_mode)
            self._forward_step = runtime.compile_fn(self._forward, compile_mode)

    def to_device_features(self, array: np.ndarray) -> torch.Tensor:
        # float16 on every device (halves memory); each batch is cast to float32 in prepare() unless AMP is on
        return torch.from_numpy(np.array(array, dtype=np.float16, copy=True)).to(self.device)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        if self.amp_dtype is None:
            x = x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | None, partner: torch.Tensor | None,
                    loss_fn: Callable, weight_decay_l2: float) -> torch.Tensor:
        xb = self.prepare(x)
        if lam is not None:
            assert partner is not None  # lam and partner come together (train_epoch)
            xb, y = mixup_batch(xb, y, lam.to(xb.dtype), partner)
            y = y.float()
        with self.autocast():
            logits = self.model(xb)
        return loss_fn(logits.float(), y) + l2_penalty(self.model, weight_decay_l2)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            return self.model.forward_with_embedding(self.prepare(x))

    def _run(self, step: Callable, what: str, *args):
        if self.compile_mode is None:
            return step(*args)
        torch.compiler.cudagraph_mark_step_begin()  # with CUDA graphs: earlier outputs may be overwritten now
        try:
            return step(*args)
        except RuntimeError as exc:
            if runtime.is_compile_error(exc):
                raise RuntimeError(
                    f"execution.train.compile: torch.compile failed on the {what} ({type(exc).__name__}: "
                    f"{str(exc).strip()}); set execution.train.compile: false to train without it"
                ) from exc
            raise

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | None, partner: torch.Tensor | None,
                   loss_fn: Callable, weight_decay_l2: float) -> torch.Tensor:
        """Loss of one training batch x [B, M, T] (float16 cache rows), soft targets y [B, C]: mixup with
        per-example weights lam [B] and partner [B] (lam None: no mixup), forward, loss + Keras L2."""
        return self._run(self._loss_step, "training step", x, y, lam, partner, loss_fn, weight_decay_l2)

    @torch.no_grad()
    def infer(self, features: torch.Tensor, rows: np.ndarray | None, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Logits [N, C] and GAP embeddings [N, D] (float32, eval mode) for the given rows."""
        self.model.eval()
        n = features.shape[0] if rows is None else len(rows)
        rows_t = None if rows is None else torch.as_tensor(rows, device=self.device)
        logits, embs = [], []
        for start in range(0, n, batch_size):
            xb = features[start:start + batch_size] if rows_t is None else features[rows_t[start:start + batch_size]]
            lo, em = self._run(self._forward_step, "evaluation forward pass", xb)
            # copies: a CUDA-graph replay reuses its output memory; one device->host copy at the end
            logits.append(lo.to(torch.float32, copy=True))
            embs.append(em.to(torch.float32, copy=True))
        if not logits:
            return np.zeros((0, self.model.n_classes), np.float32), np.zeros((0, self.model.embedding_dim), np.float32)
        return torch.cat(logits).cpu().numpy(), torch.cat(embs).cpu().numpy()


def train_epoch(
    model: ASCNet, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, runner: BatchRunner,
    x_train: torch.Tensor, onehot: torch.Tensor, order: torch.Tensor, *, batch_size: int, mixup_alpha: float,
    np_rng: np.random.Generator, loss_fn: Callable, weight_decay_l2: float,
) -> float:
    """One pass over `order` (row ids into the device-resident cache); returns the mean training loss."""
    device = x_train.device
    model.train()
    order = order.to(device)
    loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per batch
    lam_all = partner_all = None
    if mixup_alpha > 0:  # one host->device copy per epoch, none per batch
        lam_np, partner_np = draw_epoch_mixup(np_rng, len(order), batch_size, mixup_alpha)
        lam_all, partner_all = torch.from_numpy(lam_np).to(device), torch.from_numpy(partner_np).to(device)
    for start in range(0, len(order), batch_size):
        stop = start + batch_size
        idx = order[start:stop]
        lam, partner = ((None, None) if lam_all is None or partner_all is None  # set together, above
                        else (lam_all[start:stop], partner_all[start:stop]))
        batch_loss = runner.batch_loss(x_train[idx], onehot[idx], lam, partner, loss_fn, weight_decay_l2)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(batch_loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += batch_loss.detach() * len(idx)
    return float(loss_sum) / max(len(order), 1)


@dataclass(frozen=True, eq=False)
class DeviceData:
    """A run's caches on its device (copied once) and what validates each epoch."""

    x_train: torch.Tensor           # every training-cache row, float16
    x_test: torch.Tensor            # every evaluation-cache row, float16
    onehot: torch.Tensor            # one-hot label of every training-cache row
    fit_rows: torch.Tensor          # training-cache rows trained on (CPU; shuffled each epoch)
    test_labels: np.ndarray
    test_devices: np.ndarray
    val_x: torch.Tensor             # the cache that validates: x_test, or x_train for a holdout
    val_sel: np.ndarray | None      # its rows that validate (None: all)
    val_labels: np.ndarray
    val_devices: np.ndarray


def to_device(spec: RunSpec, runner: BatchRunner) -> DeviceData:
    x_train = runner.to_device_features(spec.train.features)
    x_test = runner.to_device_features(spec.test.features)
    onehot = torch.nn.functional.one_hot(torch.tensor(spec.train_labels), spec.n_classes).float().to(spec.device)
    test_labels = spec.test.index["label"].to_numpy(dtype=np.int64)
    test_devices = spec.test.index["device"].to_numpy(dtype=str)
    if spec.val_rows is None:
        val_x, val_sel, val_labels, val_devices = x_test, None, test_labels, test_devices
    else:
        val_x, val_sel = x_train, spec.val_rows
        val_labels, val_devices = spec.train_labels[spec.val_rows], spec.train_devices[spec.val_rows]
    return DeviceData(x_train, x_test, onehot, torch.as_tensor(spec.fit_rows), test_labels, test_devices,
                      val_x, val_sel, val_labels, val_devices)


def new_train_state(spec: RunSpec) -> TrainState:
    """The state before epoch 1: the model initialised from the run's seed (torch's global generator), Adadelta,
    the plateau schedule, a gradient scaler (active for fp16 autocast only) and the run's own generators."""
    cfg = spec.cfg
    torch.manual_seed(spec.seed)
    model = ASCNet(n_classes=spec.n_classes, **spec.model_cfg).to(spec.device)
    if spec.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch accepts it; stubs omit it
    optimizer = make_optimizer(model, cfg)
    scheduler = make_plateau_scheduler(optimizer, factor=float(cfg["plateau_factor"]),
                                       patience=int(cfg["plateau_patience"]),
                                       min_delta=float(cfg["plateau_min_delta"]))
    scaler = torch.amp.GradScaler("cuda", enabled=spec.runtime.amp_dtype == torch.float16)
    torch_gen = torch.Generator().manual_seed(spec.seed)
    np_rng = np.random.default_rng([spec.seed, 0x313C])
    return TrainState(model, optimizer, scheduler, scaler, torch_gen, np_rng)


def run_epoch(spec: RunSpec, state: TrainState, runner: BatchRunner, data: DeviceData) -> dict:
    """Epoch state.epoch + 1: shuffle, train, validate, step the schedule, keep the model if it is the selected
    one so far, append to state.history; returns the history row."""
    t0 = time.perf_counter()
    cfg = spec.cfg
    order = data.fit_rows[torch.randperm(len(data.fit_rows), generator=state.torch_gen)]
    train_loss = train_epoch(state.model, state.optimizer, state.scaler, runner, data.x_train, data.onehot, order,
                             batch_size=int(cfg["batch_size"]), mixup_alpha=float(cfg["mixup_alpha"]),
                             np_rng=state.np_rng, loss_fn=spec.loss_fn, weight_decay_l2=float(cfg["weight_decay_l2"]))
    val_logits, _ = runner.infer(data.val_x, data.val_sel, int(cfg["eval_batch_size"]))
    accs = device_accuracies(val_logits.argmax(axis=1), data.val_labels, data.val_devices)
    value = accs[cfg["monitor"]]
    lr = state.optimizer.param_groups[0]["lr"]
    state.scheduler.step(value)
    epoch = state.epoch + 1
    if cfg["selection"] == "last" or value > state.best["value"]:
        state.best = {"epoch": epoch, "value": value,
                      "state": {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}}
    row = {"epoch": epoch, "train_loss": train_loss, "lr": lr, "val_acc_a": accs["acc_a"], "val_acc_b": accs["acc_b"],
           "val_acc_c": accs["acc_c"], "val_avg_bc": accs["avg_bc"], "val_overall": accs["overall"],
           "seconds": time.perf_counter() - t0}
    state.history.append(row)
    state.epoch = epoch
    log.info("epoch %d/%d loss %.4f lr %.3g val a %.3f b %.3f c %.3f avg_bc %.3f overall %.3f",
             epoch, int(cfg["epochs"]), train_loss, lr, accs["acc_a"], accs["acc_b"], accs["acc_c"],
             accs["avg_bc"], accs["overall"])
    return row


def fit(spec: RunSpec, state: TrainState, runner: BatchRunner, data: DeviceData, checkpoint: Path, *,
        progress: bool, stop_after_epoch: int | None) -> bool:
    """Epochs state.epoch + 1 .. train.epochs, each followed by a checkpoint at `checkpoint`. False when
    `stop_after_epoch` ended the run early, as a kill after that epoch's checkpoint would (for tests)."""
    from tqdm.auto import tqdm

    epochs = int(spec.cfg["epochs"])
    todo = range(state.epoch, epochs)
    # pragma: no mutate start  (the progress bar: display only; the epochs run are `todo`'s)
    bar = tqdm(todo, initial=state.epoch, total=epochs, disable=not progress, desc=f"train {spec.out_dir.name}",
               leave=False)
    # pragma: no mutate end
    for _ in bar:
        row = run_epoch(spec, state, runner, data)
        # pragma: no mutate start  (the progress bar: display only)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{row['val_' + spec.cfg['monitor']]:.3f}",
                        lr=f"{row['lr']:.2g}")
        # pragma: no mutate end
        save_checkpoint(state, checkpoint, spec.run_hash)
        if stop_after_epoch is not None and state.epoch == stop_after_epoch and state.epoch < epochs:
            bar.close()
            return False
    bar.close()
    return True
