"""Training loop (docs/reproduction.md §6) and per-run outputs (docs/reproduction.md §7): Adadelta, Keras-style L2,
mixup, plateau LR, epoch selection (test | holdout | last), resumable checkpoints, metrics/embeddings/predictions."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import pandas as pd
import torch

from heatedasc.codedeps import module_closure_digest
from heatedasc.feature_cache import FeatureCache, load_feature_cache
from heatedasc.fileio import atomic_path, resumable_dir, save_torch, write_json, write_text
from heatedasc.hashing import digest
from heatedasc.losses import heated_softmax, make_loss
from heatedasc.metrics import device_accuracies, expected_calibration_error
from heatedasc.model import ASCNet, block_output_shapes, count_parameters
from heatedasc.runtime import resolve_device
from heatedasc.tau import DEVICES, SCENES, select_holdout

log = logging.getLogger("heatedasc.train")

SELECTIONS = ("test", "holdout", "last")
MONITORS = ("avg_bc", "overall")
TRAIN_KEYS = (
    "epochs", "batch_size", "lr", "rho", "eps", "weight_decay_l2", "mixup_alpha", "plateau_factor",
    "plateau_patience", "plateau_min_delta", "monitor", "selection", "holdout_fraction", "holdout_seed", "deterministic",
    "amp", "amp_dtype",
)
# Speed-only settings (params.yaml `execution.train`): how fast a run computes, never what it is (not recorded,
# never a reason to rerun; docs/reproduction.md lists them).
EXECUTION_KEYS = ("device", "channels_last", "compile", "compile_mode", "eval_batch_size")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
# torch.compile is used on these device types only. Not on CPU: CPU results must stay bit-identical to the
# eager loop's (inductor reorders float sums), and for the demo's tiny inputs inductor's C++ compile
# (10-30 s a graph on a small box) outweighs the gain.
COMPILE_DEVICES = ("cuda",)
COMPILE_CACHE_DIR = Path(".cache") / "torchinductor"  # under the working directory, unless TORCHINDUCTOR_CACHE_DIR is set
HISTORY_COLUMNS = (
    "epoch", "train_loss", "lr", "val_acc_a", "val_acc_b", "val_acc_c", "val_avg_bc", "val_overall",
)
# Seconds per epoch: beside history.csv, but not a result (.dvcignore'd): an identical rerun takes other times.
EPOCH_SECONDS = "epoch_seconds.csv"
RESUME_DIR = "resume"  # heatedasc.fileio.resumable_dir(out_dir, RESUME_DIR) holds the last epoch's checkpoint


# --------------------------------------------------------------------------------------------- data


RECORD_SUFFIX = ".provenance.json"  # a job's record beside its output: results/features/none/train.provenance.json
UPSTREAM_DEPTH = 4  # records followed up the features' inputs (stats, coefficients -> mean spectra -> prepare)


def run_holdout(cfg: dict) -> dict | None:
    """The holdout a run needs every fit to have left out, as the jobs record it (params `holdout`): None unless
    train.selection is holdout."""
    if cfg["selection"] != "holdout":
        return None
    return {"fraction": float(cfg["holdout_fraction"]), "seed": int(cfg["holdout_seed"])}


def _read_record(path: Path, what: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable provenance record of {what} ({exc})") from exc
    return record if isinstance(record, dict) else {}


def _workflow_dir(record: dict, output: Path) -> Path | None:
    """The directory the record's relative paths start from: where `output`, as the record names it, lies."""
    resolved = output.resolve().as_posix()
    for group in record.get("outputs", {}).values():
        for name in group:
            if not Path(name).is_absolute() and (resolved == name or resolved.endswith("/" + name)):
                return Path(resolved[: len(resolved) - len(name)] or "/")
    return None


def recorded_holdouts(record: dict, output: Path, depth: int = UPSTREAM_DEPTH) -> dict[Path, Any]:
    """{record path: its params `holdout`} of every job upstream of the one that wrote `output` (record `record`)
    that recorded one: the feature statistics and the mean spectra behind the correction. Records that are not
    there (files made outside the workflow) are skipped."""
    base = _workflow_dir(record, output)
    found: dict[Path, Any] = {}
    if base is None or depth == 0:
        return found
    for group in record.get("inputs", {}).values():
        for name in group:
            if name.startswith("{"):  # {data.root}/...: raw data, written by no job
                continue
            upstream = Path(name) if Path(name).is_absolute() else base / name
            record_path = upstream.with_suffix(RECORD_SUFFIX)
            if upstream == output or not record_path.is_file():
                continue
            upstream_record = _read_record(record_path, upstream)
            if "holdout" in upstream_record.get("params", {}):
                found[record_path] = upstream_record["params"]["holdout"]
            found.update(recorded_holdouts(upstream_record, upstream, depth - 1))
    return found


def _holdout_key(holdout) -> tuple | None:
    return None if not holdout else (float(holdout["fraction"]), int(holdout["seed"]))


def _describe_holdout(holdout) -> str:
    if not holdout:
        return "no holdout (every fold1_train location fitted)"
    return f"the holdout train.holdout_fraction {float(holdout['fraction']):g}, train.holdout_seed {int(holdout['seed'])}"


def check_cache_origin(cache: FeatureCache, *, correction: str | None, split: str, holdout: Any = ...) -> None:
    """The features stage's provenance record beside a cache (if any) must name this run's correction and split,
    and the fits behind the cache (feature statistics, and the mean spectra of the correction) must have left
    out exactly the run's held-out locations: `holdout` is run_holdout(...) (None: no holdout; ... = unchecked).

    A cache of another correction, split or holdout has the right shape and passes every other check, so
    without this a run would silently train or test on the wrong features, or validate on locations the
    standardisation or the correction was fitted on.
    """
    record_path = cache.npy_path.with_suffix(RECORD_SUFFIX)
    if not record_path.is_file():
        return  # caches written outside the workflow carry no record
    record = _read_record(record_path, cache.npy_path)
    wildcards = record.get("wildcards", {})
    made_for = wildcards.get("correction")
    if correction and made_for is not None and made_for != correction:
        raise ValueError(
            f"{cache.npy_path} was built for correction '{made_for}' (per {record_path}), "
            f"but this run is for correction '{correction}'"
        )
    if wildcards.get("split") not in (None, split):
        raise ValueError(
            f"{cache.npy_path} holds the '{wildcards['split']}' split (per {record_path}), expected '{split}'"
        )
    if holdout is ...:
        return
    for upstream, recorded in recorded_holdouts(record, cache.npy_path).items():
        if _holdout_key(recorded) != _holdout_key(holdout):
            raise ValueError(
                f"{cache.npy_path} was built with {_describe_holdout(recorded)} (per {upstream}), but this run has "
                f"{_describe_holdout(holdout)}; rebuild the features with this run's train.selection, "
                "train.holdout_fraction and train.holdout_seed"
            )


# ------------------------------------------------------------------------------ training pieces


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


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def code_fingerprint() -> str:
    """The import closure of this module, by content (the same notion of "the code" the workflow records), so a
    checkpoint made by other code is never resumed."""
    return module_closure_digest("train")


def _config_value(cfg: dict, key: str, section: str) -> Any:
    if key not in cfg:
        raise ValueError(f"{section}.{key} is missing from the training config")
    return cfg[key]


def _key(name: str) -> str:
    """The config key of a training setting, for messages."""
    return f"execution.train.{name}" if name in EXECUTION_KEYS else f"train.{name}"


# ------------------------------------------------------------------------------- run description


@dataclass(frozen=True)
class Runtime:
    """How a run computes on its device: resolved once from the train config and the device."""

    amp_dtype: torch.dtype | None   # autocast dtype; None: float32 throughout
    channels_last: bool
    compile_mode: str | None        # torch.compile mode; None: eager

    def describe(self) -> dict:
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.amp_dtype]
        return {"precision": precision, "channels_last": self.channels_last,
                "torch.compile": self.compile_mode or "off"}


def resolve_runtime(cfg: dict, device: torch.device) -> Runtime:
    """AMP, channels_last and torch.compile apply on CUDA only (COMPILE_DEVICES); elsewhere the run is eager fp32."""
    amp_dtype = None
    if cfg["amp"] and device.type == "cuda":
        amp_dtype = AMP_DTYPES[cfg["amp_dtype"]]
        if amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ValueError(
                f"train.amp_dtype is 'bf16' but {torch.cuda.get_device_name(device)} has no native bfloat16; "
                "set train.amp_dtype: fp16 (or train.amp: false)"
            )
    compile_mode = cfg["compile_mode"] if cfg["compile"] and device.type in COMPILE_DEVICES else None
    return Runtime(amp_dtype, bool(cfg["channels_last"]) and device.type == "cuda", compile_mode)


@contextlib.contextmanager
def _compiler_settings(runtime: Runtime, *, deterministic: bool):
    """For a compiled run: the shared compile cache, a recompile-limit hit as an error instead of a silent
    eager fallback, and (deterministic) no timing-based kernel choices that change numerics."""
    if runtime.compile_mode is None:
        yield
        return
    import torch._dynamo.config
    import torch._inductor.config

    cache_set = "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    if cache_set:  # every job of a sweep runs in the workflow's directory: they share one cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(COMPILE_CACHE_DIR.resolve())
    log.info("torch.compile cache: %s", os.environ["TORCHINDUCTOR_CACHE_DIR"])
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True), \
                torch._inductor.config.patch(deterministic=deterministic):
            yield
    finally:
        if cache_set:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One run, validated and resolved once by run_training: what _train_and_write trains and writes."""

    train: FeatureCache
    test: FeatureCache
    fit_rows: np.ndarray            # training-cache rows that are trained on
    val_rows: np.ndarray | None     # training-cache rows that validate (holdout); None: the test cache validates
    train_labels: np.ndarray        # label of every training-cache row
    train_devices: np.ndarray       # device letter of every training-cache row
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss: str
    temperature: float
    seed: int
    correction: str
    scenes: tuple[str, ...]
    model_cfg: dict
    cfg: dict                       # the train section, TRAIN_KEYS only
    param_counts: tuple[int, int]   # (trainable, keras)
    device: torch.device
    runtime: Runtime
    out_dir: Path
    run_hash: str                   # checkpoints of another hash are not resumed

    @property
    def n_classes(self) -> int:
        return len(self.scenes)


# ----------------------------------------------------------------------------------- the loop


def compile_fn(fn: Callable, mode: str) -> Callable:
    """torch.compile as training uses it: one whole graph (a graph break is an error, never a silent eager
    fallback) and static shapes (the last, smaller batch of an epoch gets its own graph)."""
    return torch.compile(fn, mode=None if mode == "default" else mode, fullgraph=True, dynamic=False)


def _is_compile_error(exc: BaseException) -> bool:
    if not isinstance(exc, RuntimeError):
        return False
    from torch._dynamo.exc import TorchDynamoException  # lazy: only a compiled run needs dynamo

    return isinstance(exc, TorchDynamoException)


class BatchRunner:
    """Holds the device tensors and does batched forward passes (through torch.compile when compile_mode is set)."""

    def __init__(self, model: ASCNet, device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool,
                 compile_mode: str | None = None):
        self.model, self.device, self.amp_dtype, self.channels_last = model, device, amp_dtype, channels_last
        self.compile_mode = compile_mode
        self._loss_step, self._forward_step = self._batch_loss, self._forward
        if compile_mode is not None:
            self._loss_step = compile_fn(self._batch_loss, compile_mode)
            self._forward_step = compile_fn(self._forward, compile_mode)

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
            if _is_compile_error(exc):
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


def _rng_snapshot(torch_gen: torch.Generator, np_rng: np.random.Generator) -> dict:
    snap = {"torch_gen": torch_gen.get_state(), "np_rng": np_rng.bit_generator.state,
            "torch_global": torch.get_rng_state()}
    if torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def _rng_restore(snap: dict, torch_gen: torch.Generator, np_rng: np.random.Generator) -> None:
    torch_gen.set_state(snap["torch_gen"])
    np_rng.bit_generator.state = snap["np_rng"]
    torch.set_rng_state(snap["torch_global"])
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])


def run_training(
    *,
    train_npy: str | os.PathLike,
    train_index: str | os.PathLike,
    eval_npy: str | os.PathLike,
    eval_index: str | os.PathLike,
    out_dir: str | os.PathLike,
    temperature: float,
    loss: str,
    seed: int,
    model_cfg: dict,
    loss_cfg: dict,
    train_cfg: dict,
    execution_cfg: dict,
    threads: int = 1,
    progress: bool = True,
    correction: str | None = None,
    stop_after_epoch: int | None = None,
) -> dict:
    """Train one (correction, T, loss, seed) run and write its outputs to `out_dir`; return the metrics.

    `correction` only labels metrics.json (default: the correction of `out_dir` read as a run folder, '' if it is
    not one).
    `stop_after_epoch` ends the run after that epoch's checkpoint, as a kill would (for tests); it
    then returns {"stopped_after_epoch": k} and writes no outputs.
    """
    out_dir = Path(out_dir)
    temperature = float(temperature)
    # ---- validate everything before any training
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for key in ("gamma", "focal_form"):
        if key not in loss_cfg:
            raise ValueError(f"loss.{key} is missing from the loss config")
    loss_fn = make_loss(loss, temperature=temperature, gamma=float(loss_cfg["gamma"]),
                        focal_form=loss_cfg["focal_form"])
    cfg = {k: _config_value(train_cfg, k, "train") for k in TRAIN_KEYS}
    cfg.update({k: _config_value(execution_cfg, k, "execution.train") for k in EXECUTION_KEYS})
    if cfg["selection"] not in SELECTIONS:
        raise ValueError(f"train.selection must be one of {SELECTIONS}, got {cfg['selection']!r}")
    if cfg["monitor"] not in MONITORS:
        raise ValueError(f"train.monitor must be one of {MONITORS}, got {cfg['monitor']!r}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{_key(key)} must be >= 1, got {cfg[key]}")
    if cfg["amp_dtype"] not in AMP_DTYPES:
        raise ValueError(f"train.amp_dtype must be one of {tuple(AMP_DTYPES)}, got {cfg['amp_dtype']!r}")
    if cfg["compile_mode"] not in COMPILE_MODES:
        raise ValueError(f"execution.train.compile_mode must be one of {COMPILE_MODES}, got {cfg['compile_mode']!r}")
    for key in ("amp", "channels_last", "compile", "deterministic"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"{_key(key)} must be true or false, got {cfg[key]!r}")
    # A job that was given a GPU its torch cannot use stops here, before any data is read.
    device = resolve_device(cfg["device"], "execution.train.device")
    runtime = resolve_runtime(cfg, device)
    scenes = tuple(SCENES)
    n_classes = len(scenes)
    train = load_feature_cache(train_npy, train_index)
    test = load_feature_cache(eval_npy, eval_index)
    if train.clip_shape != test.clip_shape:
        raise ValueError(
            f"feature shape mismatch: {train.npy_path} has clips of {train.clip_shape} "
            f"but {test.npy_path} has {test.clip_shape}"
        )
    test_devices = test.index["device"].to_numpy(dtype=str)
    for d in DEVICES:
        if not (test_devices == d).any():
            raise ValueError(f"{test.index_path}: no rows of device '{d}' in the evaluation cache")
    for cache in (train, test):
        labels = cache.index["label"].to_numpy()
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"{cache.index_path}: column 'label' must lie in 0..{n_classes - 1}")
    try:
        model_probe = ASCNet(n_classes=n_classes, **model_cfg)
    except TypeError as exc:
        raise ValueError(f"model: unexpected key in model config ({exc})") from exc
    try:
        block_output_shapes(model_probe, (1,) + train.clip_shape)
    except RuntimeError as exc:
        raise ValueError(
            f"{train.npy_path}: clips of {train.clip_shape} are too small for the model's conv blocks"
        ) from exc
    if correction is None:  # the run folder's own key (heatedasc.runkey), never a guess from its depth
        from heatedasc.runkey import parse_run_dir

        run_key = parse_run_dir(out_dir)
        correction = run_key["correction"] if run_key is not None else ""
    holdout = run_holdout(cfg)
    check_cache_origin(train, correction=correction, split="train", holdout=holdout)
    check_cache_origin(test, correction=correction, split="evaluate", holdout=holdout)
    shared = sorted(set(train.index["filename"]) & set(test.index["filename"]))
    if shared:
        raise ValueError(
            f"{train.index_path} and {test.index_path} share {len(shared)} file(s) (first: {shared[0]}); "
            "the evaluation cache must not hold training files"
        )

    selection, monitor = cfg["selection"], cfg["monitor"]
    train_labels_all = train.index["label"].to_numpy(dtype=np.int64)
    train_devices_all = train.index["device"].to_numpy(dtype=str)
    if selection == "holdout":
        # the same locations the correction and the standardisation left out (tau.without_holdout)
        val_mask = select_holdout(train.index["identifier"].to_numpy(dtype=str), float(cfg["holdout_fraction"]),
                                  int(cfg["holdout_seed"]))
        fit_rows = np.flatnonzero(~val_mask)
        val_rows = np.flatnonzero(val_mask)
        if monitor == "avg_bc":
            for d in ("b", "c"):
                if not (train_devices_all[val_rows] == d).any():
                    raise ValueError(
                        f"train.holdout_fraction: the held-out locations of {train.index_path} have no rows of "
                        f"device '{d}', so train.monitor 'avg_bc' cannot be computed"
                    )
    else:
        fit_rows = np.arange(len(train.index))
        val_rows = None
    if len(fit_rows) == 0:
        raise ValueError(f"{train.index_path}: no training rows")

    run_config = {
        # the caches by content: a checkpoint is resumed only on the very features it was trained on
        "train_npy": digest(train.npy_path), "train_index": digest(train.index_path),
        "eval_npy": digest(test.npy_path), "eval_index": digest(test.index_path),
        "temperature": temperature, "loss": loss, "seed": int(seed), "model": model_cfg, "loss_cfg": loss_cfg,
        "train": cfg, "n_classes": n_classes, "code": code_fingerprint(),
        "runtime": runtime.describe(),  # a checkpoint made in other precision or compiled otherwise is not resumed
    }
    run_hash = config_hash(run_config)

    # ---- determinism, threads, compiler settings (restored afterwards)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    prev_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if device.type == "cuda" and runtime.amp_dtype is None:
        # fp32 as the paper trained (Keras, 2019): no TF32 convolutions, which torch allows by default
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    log.info("train on %s: %s", device, ", ".join(f"{k} {v}" for k, v in runtime.describe().items()))
    spec = RunSpec(
        train=train, test=test, fit_rows=fit_rows, val_rows=val_rows, train_labels=train_labels_all,
        train_devices=train_devices_all, loss_fn=loss_fn, loss=loss, temperature=temperature, seed=int(seed),
        correction=correction, scenes=scenes, model_cfg=model_cfg, cfg=cfg,
        param_counts=count_parameters(model_probe), device=device, runtime=runtime, out_dir=out_dir,
        run_hash=run_hash,
    )
    try:
        with _compiler_settings(runtime, deterministic=cfg["deterministic"]):
            return _train_and_write(spec, progress=progress, stop_after_epoch=stop_after_epoch)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev_tf32


def _selection_note(selection: str, monitor: str, holdout_fraction: float) -> str:
    if selection == "test":
        return (
            f"The epoch was chosen by the test set (fold1_evaluate {monitor} accuracy), which also drove the "
            "learning-rate schedule, as in the paper; this leaks the test set into model selection, so the "
            "reported accuracies are optimistic."
        )
    if selection == "holdout":
        return (
            f"The epoch was chosen by {monitor} accuracy on a validation split of {holdout_fraction:g} of the "
            "fold1_train recording locations, which the spectrum correction and the standardisation also left out; "
            "the test set (fold1_evaluate) was not used for selection or the learning-rate schedule."
        )
    return (
        "The last epoch was kept (no epoch selection), but the learning-rate schedule was driven by the test set "
        f"(fold1_evaluate {monitor} accuracy), as in the paper; this leaks the test set into training, so the "
        "reported accuracies may be optimistic (use selection 'holdout' for an untouched test set)."
    )


def _train_and_write(spec: RunSpec, *, progress: bool, stop_after_epoch: int | None) -> dict:
    from tqdm.auto import tqdm

    cfg, device, out_dir, seed, n_classes = spec.cfg, spec.device, spec.out_dir, spec.seed, spec.n_classes
    train, test, fit_rows, val_rows = spec.train, spec.test, spec.fit_rows, spec.val_rows
    train_labels_all, train_devices_all = spec.train_labels, spec.train_devices
    model_cfg, temperature, loss, correction = spec.model_cfg, spec.temperature, spec.loss, spec.correction
    epochs, batch_size = int(cfg["epochs"]), int(cfg["batch_size"])
    selection, monitor = cfg["selection"], cfg["monitor"]
    amp_dtype, channels_last = spec.runtime.amp_dtype, spec.runtime.channels_last

    torch.manual_seed(seed)
    model = ASCNet(n_classes=n_classes, **model_cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch accepts it; stubs omit it
    optimizer = make_optimizer(model, cfg)
    scheduler = make_plateau_scheduler(optimizer, factor=float(cfg["plateau_factor"]),
                                       patience=int(cfg["plateau_patience"]),
                                       min_delta=float(cfg["plateau_min_delta"]))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    torch_gen = torch.Generator().manual_seed(seed)
    np_rng = np.random.default_rng([seed, 0x313C])
    runner = BatchRunner(model, device, amp_dtype, channels_last, spec.runtime.compile_mode)

    # ---- whole caches on the device once
    x_train = runner.to_device_features(train.features)
    x_test = runner.to_device_features(test.features)
    onehot = torch.nn.functional.one_hot(torch.tensor(train_labels_all), n_classes).float().to(device)
    test_labels = test.index["label"].to_numpy(dtype=np.int64)
    test_devices = test.index["device"].to_numpy(dtype=str)
    if val_rows is None:
        val_x, val_sel, val_labels, val_devices = x_test, None, test_labels, test_devices
    else:
        val_x, val_sel = x_train, val_rows
        val_labels, val_devices = train_labels_all[val_rows], train_devices_all[val_rows]
    fit_rows_t = torch.as_tensor(fit_rows)
    wd, alpha = float(cfg["weight_decay_l2"]), float(cfg["mixup_alpha"])

    # ---- resume
    resume_dir = resumable_dir(out_dir, RESUME_DIR)  # outside the run folder DVC tracks (heatedasc.fileio)
    resume_path = resume_dir / "last.pt"
    start_epoch, history = 0, []
    best: dict[str, Any] = {"epoch": 0, "value": -math.inf, "state": None}
    if resume_path.is_file():
        # CPU first: generator states must stay CPU tensors; load_state_dict moves the rest
        ckpt = torch.load(resume_path, map_location="cpu", weights_only=False)
        if ckpt.get("config_hash") == spec.run_hash:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            _rng_restore(ckpt["rng"], torch_gen, np_rng)
            start_epoch, history, best = ckpt["epoch"], ckpt["history"], ckpt["best"]
            log.info("resuming %s after epoch %d", out_dir, start_epoch)
        else:
            log.info("ignoring %s: it belongs to a different run configuration; starting over", resume_path)

    bar = tqdm(range(start_epoch, epochs), initial=start_epoch, total=epochs, disable=not progress,
               desc=f"train {out_dir.name}", leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        order = fit_rows_t[torch.randperm(len(fit_rows_t), generator=torch_gen)]
        train_loss = train_epoch(model, optimizer, scaler, runner, x_train, onehot, order, batch_size=batch_size,
                                 mixup_alpha=alpha, np_rng=np_rng, loss_fn=spec.loss_fn, weight_decay_l2=wd)
        val_logits, _ = runner.infer(val_x, val_sel, int(cfg["eval_batch_size"]))
        accs = device_accuracies(val_logits.argmax(axis=1), val_labels, val_devices)
        value = accs[monitor]
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(value)
        if selection == "last" or value > best["value"]:
            best = {"epoch": epoch + 1, "value": value,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "lr": lr, "val_acc_a": accs["acc_a"],
                        "val_acc_b": accs["acc_b"], "val_acc_c": accs["acc_c"], "val_avg_bc": accs["avg_bc"],
                        "val_overall": accs["overall"], "seconds": time.perf_counter() - t0})
        log.info("epoch %d/%d loss %.4f lr %.3g val a %.3f b %.3f c %.3f avg_bc %.3f overall %.3f",
                 epoch + 1, epochs, train_loss, lr, accs["acc_a"], accs["acc_b"], accs["acc_c"],
                 accs["avg_bc"], accs["overall"])
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{value:.3f}", lr=f"{lr:.2g}")
        ckpt = {"config_hash": spec.run_hash, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_snapshot(torch_gen, np_rng), "history": history,
                "best": best}
        save_torch(ckpt, resume_path)  # through a buffer: a full disk is an OSError naming the file
        if stop_after_epoch is not None and epoch + 1 == stop_after_epoch and epoch + 1 < epochs:
            bar.close()
            return {"stopped_after_epoch": epoch + 1}
    bar.close()

    # ---- evaluate the selected model
    model.load_state_dict(best["state"])
    eval_bs = int(cfg["eval_batch_size"])
    test_logits, test_emb = runner.infer(x_test, None, eval_bs)
    train_logits, train_emb = runner.infer(x_train, None, eval_bs)
    test_pred = test_logits.argmax(axis=1)  # accuracy from z: T does not move the argmax
    probs = heated_softmax(torch.from_numpy(test_logits), temperature).numpy().astype(np.float32)
    accs = device_accuracies(test_pred, test_labels, test_devices)
    confusion = {}
    for d in DEVICES:
        sel = test_devices == d
        mat = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(mat, (test_labels[sel], test_pred[sel]), 1)
        confusion[d] = mat.tolist()
    class_acc = {}
    for k, scene in enumerate(spec.scenes):
        sel = test_labels == k
        class_acc[scene] = float((test_pred[sel] == k).mean()) if sel.any() else None  # None: no test rows
    metrics = {
        "correction": correction, "temperature": temperature, "loss": loss, "seed": seed,
        "acc_a": accs["acc_a"], "acc_b": accs["acc_b"], "acc_c": accs["acc_c"], "avg_bc": accs["avg_bc"],
        "acc_overall": accs["overall"],
        "n_test": {d: int((test_devices == d).sum()) for d in DEVICES},
        "class_acc": class_acc, "confusion": confusion,
        "ece": expected_calibration_error(probs.astype(np.float64), test_labels),
        "params_trainable": spec.param_counts[0], "params_keras": spec.param_counts[1],
        "best_epoch": int(best["epoch"]), "epochs_run": len(history), "selection": selection,
        "selection_note": _selection_note(selection, monitor, float(cfg["holdout_fraction"])),
        "monitor": monitor, "best_monitor_value": float(best["value"]),
    }
    if val_rows is not None:  # holdout: the locations training validated on (the fits left the same ones out)
        metrics["validation_locations"] = sorted(set(train.index["identifier"].iloc[val_rows].astype(str)))
        metrics["n_validation"] = int(len(val_rows))

    # ---- outputs, each atomic
    out_dir.mkdir(parents=True, exist_ok=True)
    hist_df = pd.DataFrame(history)
    write_text(out_dir / "history.csv", hist_df[list(HISTORY_COLUMNS)].to_csv(index=False))
    write_text(out_dir / EPOCH_SECONDS, hist_df[["epoch", "seconds"]].to_csv(index=False))
    save_torch({"state_dict": best["state"],
                "meta": {"model_cfg": dict(model_cfg), "n_classes": n_classes, "temperature": temperature,
                         "loss": loss, "seed": seed, "best_epoch": int(best["epoch"]), "selection": selection,
                         "monitor": monitor, "scenes": list(spec.scenes)}}, out_dir / "model.pt")
    with atomic_path(out_dir / "embeddings.npz") as tmp:
        np.savez(tmp, train_embeddings=train_emb.astype(np.float32), train_labels=train_labels_all,
                 train_devices=train_devices_all.astype(str), test_embeddings=test_emb.astype(np.float32),
                 test_labels=test_labels, test_devices=test_devices.astype(str))
    with atomic_path(out_dir / "predictions.npz") as tmp:
        np.savez(tmp, filenames=test.index["filename"].to_numpy(dtype=str), labels=test_labels,
                 devices=test_devices.astype(str), logits=test_logits.astype(np.float32), probs=probs)
    write_json(out_dir / "metrics.json", metrics)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return metrics
