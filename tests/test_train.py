"""Training loop (docs/reproduction.md §6) and run outputs (docs/reproduction.md §7) on a tiny synthetic feature cache."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

torch.set_num_threads(1)

SCENES = ("airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
          "street_pedestrian", "street_traffic", "tram")  # the output contract's order, spelt out

from heatedasc.feature_cache import load_feature_cache  # noqa: E402
from heatedasc.fileio import resumable_dir  # noqa: E402
from heatedasc.losses import make_loss  # noqa: E402
from heatedasc.metrics import ece_from_bins, expected_calibration_error, reliability_bins  # noqa: E402
from heatedasc.model import ASCNet  # noqa: E402
from heatedasc.tau import select_holdout  # noqa: E402
from heatedasc.train import (  # noqa: E402
    EXECUTION_KEYS,
    HISTORY_COLUMNS,
    RESUME_DIR,
    BatchRunner,
    draw_epoch_mixup,
    draw_mixup,
    l2_penalty,
    make_optimizer,
    make_plateau_scheduler,
    mixup_batch,
    run_training,
    train_epoch,
)

N_MELS, N_FRAMES = 24, 32  # smallest-ish input the paper's five blocks accept
MODEL_CFG = dict(channels=[16, 32, 32, 64, 64], strides=[1, 2, 1, 2, 1], kernel_size=3,
                 bn_momentum_keras=0.99, bn_eps=1e-3)
LOSS_CFG = dict(gamma=1.0, focal_form="eq2")
TRAIN_CFG = dict(epochs=3, batch_size=16, lr=0.5, rho=0.95, eps=1e-7, weight_decay_l2=1e-5, mixup_alpha=0.2,
                 plateau_factor=0.1, plateau_patience=16, plateau_min_delta=1e-3, monitor="avg_bc",
                 selection="test", holdout_fraction=0.25, holdout_seed=0, deterministic=False, amp=True,
                 amp_dtype="bf16")
EXEC_CFG = dict(device="cpu", channels_last=True, compile=True, compile_mode="default", eval_batch_size=128)


def split_cfg(overrides: dict | None) -> tuple[dict, dict]:
    """(train section, execution.train section) with `overrides` applied to whichever holds each key."""
    overrides = overrides or {}
    execution = {**EXEC_CFG, **{k: v for k, v in overrides.items() if k in EXECUTION_KEYS}}
    return {**TRAIN_CFG, **{k: v for k, v in overrides.items() if k not in EXECUTION_KEYS}}, execution


def write_cache(folder, split, n, *, seed, n_classes=3, devices=("a", "b", "c"), shape=(N_MELS, N_FRAMES)):
    """Cluster-structured float16 cache + csv index following the feature-cache contract."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    dev = np.array(devices)[(np.arange(n) // n_classes) % len(devices)]
    x = rng.normal(size=(n,) + shape) + labels[:, None, None] * 1.0
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}.npy", x.astype(np.float16))
    pd.DataFrame({
        "row": np.arange(n), "filename": [f"audio/{split}-{i}-{d}.wav" for i, d in enumerate(dev)],
        "scene_label": [SCENES[k] for k in labels], "label": labels, "device": dev,
        "identifier": [f"city-{i % 8}" for i in range(n)], "group": [f"g{i}" for i in range(n)],
    }).to_csv(folder / f"{split}.csv", index=False)
    return folder / f"{split}.npy", folder / f"{split}.csv"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    train = write_cache(folder, "train", 60, seed=0)
    test = write_cache(folder, "evaluate", 30, seed=1)
    return folder, train, test


def train(cache, out_dir, *, temperature=10.0, loss="focal", seed=0, train_cfg=None, test=None, **kw):
    folder, (train_npy, train_csv), (eval_npy, eval_csv) = cache
    if test is not None:
        eval_npy, eval_csv = test
    train_section, execution = split_cfg(train_cfg)
    return run_training(
        train_npy=train_npy, train_index=train_csv, eval_npy=eval_npy, eval_index=eval_csv, out_dir=out_dir,
        temperature=temperature, loss=loss, seed=seed, model_cfg=MODEL_CFG, loss_cfg=LOSS_CFG,
        train_cfg=train_section, execution_cfg=execution, threads=1, progress=False, **kw,
    )


@pytest.fixture(scope="module")
def baseline(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ref_abc" / "T10.0" / "focal" / "seed0"
    return out, train(cache, out)


# ------------------------------------------------------------------------------------ pieces


def test_l2_penalty_touches_kernels_only():
    torch.manual_seed(0)
    model = ASCNet(n_classes=3)
    l2_penalty(model, 1e-5).backward()
    kernels = {id(p) for p in model.kernel_parameters()}
    assert len(kernels) == 6  # 5 conv + 1 dense
    for name, p in model.named_parameters():
        if id(p) in kernels:
            assert torch.allclose(p.grad, 2e-5 * p.detach()), name
        else:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    expected = 1e-5 * sum(float((p.detach() ** 2).sum()) for p in model.kernel_parameters())
    assert l2_penalty(model, 1e-5).item() == pytest.approx(expected, rel=1e-5)


def test_mixup_targets_sum_to_one_and_mix_pairs():
    rng = np.random.default_rng(0)
    lam, partner = draw_mixup(rng, 32, 0.2)
    assert lam.shape == (32,) and ((lam >= 0) & (lam <= 1)).all()
    assert sorted(partner) == list(range(32))
    assert lam.std() > 0.1  # per-example draws, U-shaped for alpha 0.2
    x = torch.randn(32, 1, 4, 5)
    y = torch.nn.functional.one_hot(torch.arange(32) % 10, 10).float()
    xm, ym = mixup_batch(x, y, torch.from_numpy(lam), torch.from_numpy(partner))
    assert torch.allclose(ym.sum(dim=1), torch.ones(32))
    i, j = 5, int(partner[5])
    assert torch.allclose(xm[i], float(lam[i]) * x[i] + (1 - float(lam[i])) * x[j])
    # same seed, same draws
    lam2, partner2 = draw_mixup(np.random.default_rng(0), 32, 0.2)
    assert np.array_equal(lam, lam2) and np.array_equal(partner, partner2)


def test_epoch_mixup_draw_equals_per_batch_draws_in_order():
    rng_epoch, rng_batches = np.random.default_rng(5), np.random.default_rng(5)
    lam, partner = draw_epoch_mixup(rng_epoch, 45, 16, 0.2)  # batches of 16, 16, 13
    assert lam.dtype == np.float32 and partner.dtype == np.int64 and lam.shape == partner.shape == (45,)
    for start, size in ((0, 16), (16, 16), (32, 13)):
        lam_b, partner_b = draw_mixup(rng_batches, size, 0.2)
        assert np.array_equal(lam[start:start + size], lam_b) and np.array_equal(partner[start:start + size], partner_b)
    assert rng_epoch.bit_generator.state == rng_batches.bit_generator.state  # the next epoch draws the same too
    assert [a.shape for a in draw_epoch_mixup(rng_epoch, 0, 16, 0.2)] == [(0,), (0,)]


def _train_epoch_drawing_per_batch(model, optimizer, runner, x_train, onehot, order, *, batch_size, mixup_alpha,
                                   np_rng, loss_fn, weight_decay_l2):
    """The loop as it was before the per-epoch draw: a numpy draw and two host->device copies every batch."""
    device = x_train.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        xb = runner.prepare(x_train[idx])
        yb = onehot[idx]
        lam, partner = draw_mixup(np_rng, len(idx), mixup_alpha)
        lam_t = torch.from_numpy(lam).to(device)
        xb, yb = mixup_batch(xb, yb, lam_t.to(xb.dtype), torch.from_numpy(partner).to(device))
        yb = yb.float()
        logits = model(xb)
        batch_loss = loss_fn(logits.float(), yb) + l2_penalty(model, weight_decay_l2)
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        loss_sum += batch_loss.detach() * len(idx)
    return float(loss_sum) / max(len(order), 1)


def test_train_epoch_is_bit_identical_to_per_batch_mixup_draws():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(45, N_MELS, N_FRAMES)).astype(np.float16)
    labels = np.arange(45) % 10
    order = torch.from_numpy(rng.permutation(45))
    loss_fn = make_loss("focal", temperature=10.0, gamma=1.0)
    results = []
    for loop in ("per_epoch", "per_batch"):
        torch.manual_seed(0)
        model = ASCNet(n_classes=10)
        optimizer = make_optimizer(model, TRAIN_CFG)
        runner = BatchRunner(model, torch.device("cpu"), None, False)
        x = runner.to_device_features(features)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).float()
        np_rng = np.random.default_rng([0, 0x313C])
        kw = dict(batch_size=16, mixup_alpha=0.2, np_rng=np_rng, loss_fn=loss_fn, weight_decay_l2=1e-5)
        losses = []
        for _ in range(2):  # two epochs of 3 batches (16, 16, 13): the generator carries over between epochs
            if loop == "per_epoch":
                scaler = torch.amp.GradScaler("cuda", enabled=False)
                losses.append(train_epoch(model, optimizer, scaler, runner, x, onehot, order, **kw))
            else:
                losses.append(_train_epoch_drawing_per_batch(model, optimizer, runner, x, onehot, order, **kw))
        results.append((losses, model.state_dict(), np_rng.bit_generator.state))
    (loss_new, state_new, rng_new), (loss_old, state_old, rng_old) = results
    assert loss_new == loss_old  # exactly: same draws, same ops, same order
    assert all(torch.equal(state_new[k], state_old[k]) for k in state_old)
    assert rng_new == rng_old


def test_plateau_schedule_reduces_after_patience_keras_semantics():
    opt = torch.optim.Adadelta([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = make_plateau_scheduler(opt, factor=0.1, patience=2, min_delta=1e-3)
    lrs = []
    # epoch 1 improves; 2 is within min_delta (no improvement); 3 is the 2nd bad epoch -> reduce
    for value in (0.50, 0.5005, 0.49, 0.49, 0.49):
        sched.step(value)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005])


def keras_plateau_lrs(values, *, lr, factor, patience, min_delta):
    """tf.keras ReduceLROnPlateau (mode max, cooldown 0, min_lr 0), transcribed: the LR after each epoch."""
    best, wait, out = -math.inf, 0, []
    for current in values:
        if current > best + min_delta:
            best, wait = current, 0
        else:
            wait += 1
            if wait >= patience and lr > 0.0:
                lr, wait = lr * factor, 0
        out.append(lr)
    return out


@pytest.mark.parametrize("patience", [1, 2, 5, 16])
def test_plateau_schedule_equals_keras_on_random_accuracy_curves(patience):
    rng = np.random.default_rng(patience)
    for _ in range(50):
        # 150 epochs of a noisy, saturating accuracy curve: plateaus of every length occur
        values = np.clip(np.cumsum(rng.normal(0.002, 0.01, 150)) + 0.3, 0, 1).round(4).tolist()
        opt = torch.optim.Adadelta([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        sched = make_plateau_scheduler(opt, factor=0.1, patience=patience, min_delta=1e-3)
        ours = []
        for v in values:
            sched.step(v)
            ours.append(opt.param_groups[0]["lr"])
        expected = keras_plateau_lrs(values, lr=0.5, factor=0.1, patience=patience, min_delta=1e-3)
        assert ours == pytest.approx(expected, rel=1e-9, abs=0.0)
    assert min(ours) < 1e-8 if patience == 1 else True  # cuts go on below torch's default eps of 1e-8


def test_optimizer_is_adadelta_with_keras_values_and_one_step_matches_the_keras_update():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    cfg = {"lr": 0.5, "rho": 0.95, "eps": 1e-7}
    opt = make_optimizer(torch.nn.ParameterList([w]), cfg)
    group = opt.param_groups[0]
    assert (group["lr"], group["rho"], group["eps"], group["weight_decay"]) == (0.5, 0.95, 1e-7, 0.0)
    # Keras Adadelta: a ← ρa + (1−ρ)g²; u = g·√(d + ε)/√(a + ε); w ← w − lr·u; d ← ρd + (1−ρ)u²
    a = np.zeros(2)
    d = np.zeros(2)
    expected = np.array([1.0, -2.0])
    for g in (np.array([0.3, -0.1]), np.array([0.2, 0.4])):
        w.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        a = 0.95 * a + 0.05 * g ** 2
        u = g * np.sqrt(d + 1e-7) / np.sqrt(a + 1e-7)
        expected = expected - 0.5 * u
        d = 0.95 * d + 0.05 * u ** 2
        assert w.detach().numpy() == pytest.approx(expected, rel=1e-5)


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    # bins (15 wide): 0.9 right, 0.8 wrong, 0.7 right, 0.55 wrong, each alone in its bin
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.55)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_report_bins_give_the_training_ece_to_the_last_digit():
    """metrics.json `ece` and the report's reliability bins are one computation: same number, bit for bit.

    On these 12 non-empty bins a pairwise sum of the bin terms (pandas' Series.sum) differs from the
    bin-by-bin sum in the last digit, which the 15-bin loop transcribed here (the original metrics.json
    formula) pins down.
    """
    rng = np.random.default_rng(2)
    z = rng.normal(size=(200, 10)) * 2
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 10, 200)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    expected = 0.0
    for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            expected += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    bins = reliability_bins(probs, labels)
    assert list(bins.columns) == ["lo", "hi", "count", "accuracy", "confidence"]
    assert len(bins) == 15 and bins["count"].sum() == 200 and (bins["count"] > 0).sum() == 12
    assert ece_from_bins(bins) == expected_calibration_error(probs, labels) == expected
    used = bins[bins["count"] > 0]
    assert (used["count"] / 200 * (used["accuracy"] - used["confidence"]).abs()).sum() != expected
    assert np.isnan(ece_from_bins(reliability_bins(np.zeros((0, 10)), np.zeros(0, dtype=int))))


def test_select_holdout_is_by_location_and_seeded():
    ids = np.array([f"loc{i % 10}" for i in range(100)])
    mask = select_holdout(ids, 0.2, seed=3)
    held = set(ids[mask])
    assert len(held) == 2 and not held & set(ids[~mask])
    assert np.array_equal(mask, select_holdout(ids, 0.2, seed=3))
    assert any(not np.array_equal(mask, select_holdout(ids, 0.2, seed=s)) for s in range(4, 10))


# ------------------------------------------------------------------------------ end to end


def test_outputs_follow_contract(baseline):
    out, metrics = baseline
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("correction", "temperature", "loss", "seed", "acc_a", "acc_b", "acc_c", "avg_bc", "acc_overall",
                "n_test", "class_acc", "confusion", "ece", "params_trainable", "params_keras", "best_epoch",
                "epochs_run", "selection", "selection_note", "monitor", "best_monitor_value"):
        assert key in saved, key
    assert saved["correction"] == "ref_abc" and saved["temperature"] == 10.0 and saved["loss"] == "focal"
    for key in ("acc_a", "acc_b", "acc_c", "avg_bc", "acc_overall", "ece"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["avg_bc"] == pytest.approx((saved["acc_b"] + saved["acc_c"]) / 2)
    assert saved["n_test"] == {"a": 12, "b": 9, "c": 9}
    assert saved["params_trainable"] == 70_538 and saved["params_keras"] == 70_954
    assert 1 <= saved["best_epoch"] <= 3 and saved["epochs_run"] == 3
    assert saved["selection"] == "test" and "test set" in saved["selection_note"] and "leak" in saved["selection_note"]
    assert list(saved["class_acc"]) == list(SCENES)
    for d in "abc":
        conf = np.array(saved["confusion"][d])
        assert conf.shape == (10, 10) and conf.sum() == saved["n_test"][d]
        assert np.trace(conf) / conf.sum() == pytest.approx(saved[f"acc_{d}"])

    hist = pd.read_csv(out / "history.csv")
    assert tuple(hist.columns) == HISTORY_COLUMNS and list(hist["epoch"]) == [1, 2, 3]
    assert hist["val_avg_bc"].max() == pytest.approx(saved["best_monitor_value"])
    assert hist["val_avg_bc"].iloc[saved["best_epoch"] - 1] == pytest.approx(saved["best_monitor_value"])
    assert saved["avg_bc"] == pytest.approx(saved["best_monitor_value"])  # selection=test: val IS the test set

    emb = np.load(out / "embeddings.npz")
    assert emb["train_embeddings"].shape == (60, 64) and emb["train_embeddings"].dtype == np.float32
    assert emb["test_embeddings"].shape == (30, 64)
    assert list(emb["train_devices"][:4]) == ["a", "a", "a", "b"] and emb["test_labels"].shape == (30,)

    pred = np.load(out / "predictions.npz")
    assert pred["logits"].shape == (30, 10) and pred["logits"].dtype == np.float32
    assert np.allclose(pred["probs"], torch.softmax(torch.from_numpy(pred["logits"]) / 10.0, 1).numpy(), atol=1e-6)
    acc_a = (pred["logits"].argmax(1) == pred["labels"])[pred["devices"] == "a"].mean()
    assert acc_a == pytest.approx(saved["acc_a"])
    assert pred["filenames"][0] == "audio/evaluate-0-a.wav"

    ckpt = torch.load(out / "model.pt", weights_only=False)
    model = ASCNet(n_classes=10, **MODEL_CFG)
    model.load_state_dict(ckpt["state_dict"])
    assert ckpt["meta"]["best_epoch"] == saved["best_epoch"]
    assert not resumable_dir(out, RESUME_DIR).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_same_seed_twice_gives_identical_metrics(baseline, cache, tmp_path):
    _, first = baseline
    second = train(cache, tmp_path / "again" / "T10.0" / "focal" / "seed0")
    first, second = dict(first), dict(second)
    first.pop("correction"), second.pop("correction")
    assert first == second
    other = train(cache, tmp_path / "other", seed=1)
    hist0 = pd.read_csv(baseline[0] / "history.csv")
    hist1 = pd.read_csv(tmp_path / "other" / "history.csv")
    assert not np.allclose(hist0["train_loss"], hist1["train_loss"])  # the seed matters
    assert other["seed"] == 1


def test_resume_after_kill_gives_identical_metrics(baseline, cache, tmp_path, caplog):
    out = tmp_path / "ref_abc" / "T10.0" / "focal" / "seed0"
    assert train(cache, out, stop_after_epoch=1) == {"stopped_after_epoch": 1}
    assert (resumable_dir(out, RESUME_DIR) / "last.pt").is_file() and not (out / "metrics.json").exists()
    assert not out.exists() or not any(out.iterdir())  # the checkpoint is kept outside the run's tracked folder
    with caplog.at_level("INFO", logger="heatedasc.train"):
        resumed = train(cache, out)
    assert f"resuming {out} after epoch 1" in caplog.text  # really resumed, not restarted
    assert "epoch 1/3" not in caplog.text and "epoch 2/3" in caplog.text
    assert resumed == baseline[1]
    assert not resumable_dir(out, RESUME_DIR).exists()
    hist = pd.read_csv(out / "history.csv")
    base = pd.read_csv(baseline[0] / "history.csv")
    pd.testing.assert_frame_equal(hist, base)
    # Every tracked output is byte-identical to the uninterrupted run's (DVC's lock cannot tell them apart);
    # the seconds per epoch, which differ, live apart and are not tracked.
    for name in ("history.csv", "model.pt", "embeddings.npz", "predictions.npz", "metrics.json"):
        assert (out / name).read_bytes() == (baseline[0] / name).read_bytes(), name
    assert "seconds" not in hist.columns
    seconds = pd.read_csv(out / "epoch_seconds.csv")
    assert list(seconds["epoch"]) == [1, 2, 3] and (seconds["seconds"] > 0).all()
    assert "epoch_seconds.csv" in (REPO / ".dvcignore").read_text().split()


def test_resume_restores_the_lr_schedule(cache, tmp_path, caplog):
    # patience 1 cuts the LR within a few epochs, so a resume that lost the scheduler state would differ
    cfg = {"epochs": 5, "plateau_patience": 1}
    whole = train(cache, tmp_path / "whole", train_cfg=cfg)
    lrs = pd.read_csv(tmp_path / "whole" / "history.csv")["lr"]
    assert lrs.nunique() > 1, "the schedule never cut the LR: this test would not see a lost scheduler"
    out = tmp_path / "killed"
    assert train(cache, out, train_cfg=cfg, stop_after_epoch=3) == {"stopped_after_epoch": 3}
    with caplog.at_level("INFO", logger="heatedasc.train"):
        assert train(cache, out, train_cfg=cfg) == whole
    assert f"resuming {out} after epoch 3" in caplog.text
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"),
                                  pd.read_csv(tmp_path / "whole" / "history.csv"))


def test_every_epoch_reshuffles_all_training_rows(cache, tmp_path, monkeypatch):
    import heatedasc.train.loop as loop

    orders = []
    real_epoch = loop.train_epoch

    def recording(model, optimizer, scaler, runner, x_train, onehot, order, **kw):
        orders.append(order.tolist())
        return real_epoch(model, optimizer, scaler, runner, x_train, onehot, order, **kw)

    monkeypatch.setattr(loop, "train_epoch", recording)
    train(cache, tmp_path / "shuffle")
    assert len(orders) == 3
    assert all(sorted(o) == list(range(60)) for o in orders)  # each epoch sees every training row once
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(60))


def test_checkpoint_of_other_code_is_not_resumed(baseline, cache, tmp_path, caplog, monkeypatch):
    import heatedasc.train.checkpoint as checkpoint

    out = tmp_path / "ref_abc" / "T10.0" / "focal" / "seed0"
    real = checkpoint.code_fingerprint()
    monkeypatch.setattr(checkpoint, "code_fingerprint", lambda: "an edited heatedasc/train/loop.py")
    train(cache, out, stop_after_epoch=1)
    monkeypatch.setattr(checkpoint, "code_fingerprint", lambda: real)
    with caplog.at_level("INFO", logger="heatedasc.train"):
        again = train(cache, out)
    assert "different run configuration; starting over" in caplog.text
    assert again == baseline[1]


def test_resume_from_other_config_starts_over(baseline, cache, tmp_path, caplog):
    out = tmp_path / "ref_abc" / "T10.0" / "focal" / "seed0"
    train(cache, out, stop_after_epoch=1, train_cfg={"lr": 0.1})
    with caplog.at_level("INFO", logger="heatedasc.train"):
        again = train(cache, out)
    assert "different run configuration; starting over" in caplog.text
    assert again == baseline[1]


def test_holdout_keeps_test_set_out_of_selection(cache, tmp_path):
    other_test = write_cache(tmp_path / "other", "evaluate", 30, seed=7)  # same layout, different content
    cfg = {"selection": "holdout"}
    m1 = train(cache, tmp_path / "h1", train_cfg=cfg)
    m2 = train(cache, tmp_path / "h2", train_cfg=cfg, test=other_test)
    h1 = pd.read_csv(tmp_path / "h1" / "history.csv")
    h2 = pd.read_csv(tmp_path / "h2" / "history.csv")
    pd.testing.assert_frame_equal(h1, h2)  # training, validation and LR never saw the test set
    assert m1["best_epoch"] == m2["best_epoch"] and m1["best_monitor_value"] == m2["best_monitor_value"]
    assert m1["selection"] == "holdout" and "not used" in m1["selection_note"]
    # with selection=test a different test set does change the validation history
    train(cache, tmp_path / "t2", test=other_test)
    base = pd.read_csv(tmp_path / "t2" / "history.csv")
    assert not np.allclose(base["val_overall"], h1["val_overall"]) or not np.allclose(
        base["val_avg_bc"], h1["val_avg_bc"])


def test_holdout_run_lists_the_locations_it_validated_on(cache, tmp_path):
    m = train(cache, tmp_path / "h", train_cfg={"selection": "holdout", "epochs": 1})
    index = pd.read_csv(cache[1][1])
    held = select_holdout(index["identifier"].to_numpy(str), TRAIN_CFG["holdout_fraction"], TRAIN_CFG["holdout_seed"])
    assert m["validation_locations"] == sorted(set(index["identifier"][held]))
    assert m["n_validation"] == int(held.sum()) > 0
    assert "validation_locations" not in train(cache, tmp_path / "t", train_cfg={"epochs": 1})  # test selection


def write_workflow_records(root, correction, *, stats_holdout, spectra_holdout):
    """The provenance records the workflow leaves behind a correction's caches (as heatedasc.job writes them: paths
    relative to the workflow directory `root`): features -> stats and coefficients -> mean spectra. Only the
    records; the upstream files themselves are not needed."""
    feats, coefs = f"results/features/{correction}", "results/coefficients"

    def record(path, *, params, inputs, outputs, wildcards=None):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps({"record_version": 2, "wildcards": wildcards or {}, "params": params,
                                             "inputs": inputs, "outputs": outputs}))

    upstream = {"manifest": {"results/prepared/manifest.csv": "m" * 32},
                "coefficients": {f"{coefs}/{correction}.npz": "c" * 32}}
    for split in ("train", "evaluate"):
        record(f"{feats}/{split}.provenance.json", wildcards={"correction": correction, "split": split},
               params={"extractor": {}}, inputs={**upstream, "stats": {f"{feats}/stats.npz": "s" * 32}},
               outputs={"cache": {f"{feats}/{split}.npy": "x" * 32}, "index": {f"{feats}/{split}.csv": "i" * 32}})
    record(f"{feats}/stats.provenance.json", params={"holdout": stats_holdout}, inputs=upstream,
           outputs={"out": {f"{feats}/stats.npz": "s" * 32}})
    record(f"{coefs}/{correction}.provenance.json", params={"estimator": "ratio_of_means"},
           inputs={"spectra": {f"{coefs}/mean_spectra.npz": "p" * 32}},
           outputs={"out": {f"{coefs}/{correction}.npz": "c" * 32}})
    record(f"{coefs}/mean_spectra.provenance.json", params={"holdout": spectra_holdout},
           inputs={"manifest": {"results/prepared/manifest.csv": "m" * 32}},
           outputs={"out": {f"{coefs}/mean_spectra.npz": "p" * 32}})


def test_a_cache_fitted_with_another_holdout_is_refused(tmp_path):
    from heatedasc.train import check_cache_origin, run_holdout

    root = tmp_path / "wf"
    folder = root / "results" / "features" / "ref_abc"
    caches = (folder, write_cache(folder, "train", 60, seed=0), write_cache(folder, "evaluate", 30, seed=1))
    cache = load_feature_cache(*caches[1])
    held = {"selection": "holdout", "holdout_fraction": 0.25, "holdout_seed": 0}
    ours = run_holdout(held)
    assert ours == {"fraction": 0.25, "seed": 0} and run_holdout({**held, "selection": "test"}) is None
    stats_record = folder / "stats.provenance.json"
    spectra_record = root / "results" / "coefficients" / "mean_spectra.provenance.json"

    write_workflow_records(root, "ref_abc", stats_holdout=ours, spectra_holdout=ours)
    check_cache_origin(cache, correction="ref_abc", split="train", holdout={"fraction": 0.25, "seed": 0})
    with pytest.raises(ValueError, match=re.escape(  # the correction's record is the first one met
            f"{cache.npy_path} was built with the holdout train.holdout_fraction 0.25, train.holdout_seed 0 (per "
            f"{spectra_record}), but this run has no holdout (every fold1_train location fitted)")):
        check_cache_origin(cache, correction="ref_abc", split="train", holdout=None)  # a test-selection run
    with pytest.raises(ValueError, match=re.escape("but this run has the holdout train.holdout_fraction 0.25, "
                                                   "train.holdout_seed 1")):
        check_cache_origin(cache, correction="ref_abc", split="train", holdout={"fraction": 0.25, "seed": 1})

    # statistics fitted on every location: the run would validate on locations the standardisation saw
    write_workflow_records(root, "ref_abc", stats_holdout=None, spectra_holdout=ours)
    with pytest.raises(ValueError, match=re.escape(
            f"{cache.npy_path} was built with no holdout (every fold1_train location fitted) (per {stats_record}), "
            "but this run has the holdout train.holdout_fraction 0.25, train.holdout_seed 0; rebuild the features")):
        check_cache_origin(cache, correction="ref_abc", split="train", holdout=ours)
    # the correction's mean spectra left out other locations
    write_workflow_records(root, "ref_abc", stats_holdout=ours, spectra_holdout={"fraction": 0.1, "seed": 0})
    with pytest.raises(ValueError, match=re.escape(
            f"train.holdout_fraction 0.1, train.holdout_seed 0 (per {spectra_record})")):
        check_cache_origin(cache, correction="ref_abc", split="train", holdout=ours)
    # the same through run_training: refused before anything is trained or written
    write_workflow_records(root, "ref_abc", stats_holdout=None, spectra_holdout=None)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=re.escape(f"(per {spectra_record}), but this run has the holdout")):
        train(caches, out, train_cfg=held, correction="ref_abc")
    assert not out.exists()
    assert train(caches, out, train_cfg={**held, "selection": "test", "epochs": 1}, correction="ref_abc")["acc_a"] >= 0


def test_last_selection_keeps_final_epoch(cache, tmp_path):
    cfg = {"selection": "last", "epochs": 2, "monitor": "overall", "deterministic": True}
    m = train(cache, tmp_path / "last", loss="ce", train_cfg=cfg)
    assert not torch.are_deterministic_algorithms_enabled()  # global switch restored after the run
    hist = pd.read_csv(tmp_path / "last" / "history.csv")
    assert m["best_epoch"] == 2 and m["monitor"] == "overall" and m["loss"] == "ce"
    assert "last epoch" in m["selection_note"]
    assert m["best_monitor_value"] == pytest.approx(hist["val_overall"].iloc[-1])
    assert m["acc_overall"] == pytest.approx(hist["val_overall"].iloc[-1])


# ------------------------------------------------------------------------------- bad input


def test_bad_input_errors(cache, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match=re.escape("temperature must be > 0, got 0.0")):
        train(cache, out, temperature=0)
    with pytest.raises(ValueError, match=re.escape("loss must be one of ('focal', 'ce'), got 'hinge'")):
        train(cache, out, loss="hinge")
    with pytest.raises(ValueError, match=re.escape(
            "train.selection must be one of ('test', 'holdout', 'last'), got 'best'")):
        train(cache, out, train_cfg={"selection": "best"})
    with pytest.raises(ValueError, match=re.escape("train.monitor must be one of ('avg_bc', 'overall'), got 'acc_a'")):
        train(cache, out, train_cfg={"monitor": "acc_a"})
    with pytest.raises(ValueError, match=re.escape(
            "loss.focal_form must be one of ('eq2', 'target_prob'), got 'eq3'")):
        run_training(train_npy=cache[1][0], train_index=cache[1][1], eval_npy=cache[2][0], eval_index=cache[2][1],
                     out_dir=out, temperature=1.0, loss="focal", seed=0, model_cfg=MODEL_CFG,
                     loss_cfg={"gamma": 1.0, "focal_form": "eq3"}, train_cfg=TRAIN_CFG, execution_cfg=EXEC_CFG,
                     progress=False)
    with pytest.raises(ValueError, match=re.escape("train.epochs is missing from the training config")):
        run_training(train_npy=cache[1][0], train_index=cache[1][1], eval_npy=cache[2][0], eval_index=cache[2][1],
                     out_dir=out, temperature=1.0, loss="ce", seed=0, model_cfg=MODEL_CFG, loss_cfg=LOSS_CFG,
                     train_cfg={k: v for k, v in TRAIN_CFG.items() if k != "epochs"}, execution_cfg=EXEC_CFG,
                     progress=False)
    no_c = write_cache(tmp_path / "noc", "evaluate", 12, seed=2, devices=("a", "b"))
    with pytest.raises(ValueError, match=re.escape(f"{no_c[1]}: no rows of device 'c' in the evaluation cache")):
        train(cache, out, test=no_c)
    wrong_shape = write_cache(tmp_path / "shape", "evaluate", 12, seed=2, shape=(N_MELS, N_FRAMES + 1))
    with pytest.raises(ValueError, match=re.escape(
            f"feature shape mismatch: {cache[1][0]} has clips of {(N_MELS, N_FRAMES)} "
            f"but {wrong_shape[0]} has {(N_MELS, N_FRAMES + 1)}")):
        train(cache, out, test=wrong_shape)
    short = write_cache(tmp_path / "short", "evaluate", 12, seed=2)
    pd.read_csv(short[1]).iloc[:10].to_csv(short[1], index=False)
    with pytest.raises(ValueError, match=re.escape(f"{short[1]}: 10 rows but {short[0]} holds 12 clips")):
        load_feature_cache(*short)
    with pytest.raises(ValueError, match=re.escape(f"{short[1]}: 10 rows but {short[0]} holds 12 clips")):
        train(cache, out, test=short)
    # A cache built for another correction or split (per the features stage's provenance record).
    other = write_cache(tmp_path / "other", "evaluate", 12, seed=2)
    record = other[0].with_suffix(".provenance.json")
    record.write_text(json.dumps({"stage": "features", "wildcards": {"correction": "none", "split": "evaluate"}}))
    with pytest.raises(ValueError, match=re.escape(
            f"{other[0]} was built for correction 'none' (per {record}), but this run is for correction 'ref_abc'")):
        train(cache, out, test=other, correction="ref_abc")
    record.write_text(json.dumps({"stage": "features", "wildcards": {"correction": "ref_abc", "split": "train"}}))
    with pytest.raises(ValueError, match=re.escape(f"{other[0]} holds the 'train' split (per {record}), expected 'evaluate'")):
        train(cache, out, test=other, correction="ref_abc")
    # A wrong file list: the evaluation cache holds training files.
    leak = write_cache(tmp_path / "leak", "evaluate", 12, seed=2)
    index = pd.read_csv(leak[1])
    index.loc[3, "filename"] = pd.read_csv(cache[1][1])["filename"].iloc[5]
    index.to_csv(leak[1], index=False)
    with pytest.raises(ValueError, match=re.escape(
            f"{cache[1][1]} and {leak[1]} share 1 file(s) (first: audio/train-5-b.wav)")):
        train(cache, out, test=leak)
    gone = tmp_path / "gone" / "evaluate.npy"
    with pytest.raises(ValueError, match=re.escape(f"{gone}: feature cache not found")):
        train(cache, out, test=(gone, cache[2][1]))
    assert not out.exists()  # every check above fails before anything is written
    tiny = write_cache(tmp_path / "tiny", "train", 12, seed=2, shape=(16, 20))
    tiny_eval = write_cache(tmp_path / "tiny", "evaluate", 12, seed=3, shape=(16, 20))
    with pytest.raises(ValueError, match=re.escape(f"{tiny[0]}: clips of (16, 20) are too small")):
        train((tmp_path / "tiny", tiny, tiny_eval), out)
    assert not out.exists()  # nothing trained, nothing written


def test_loop_learns_separable_data(cache, tmp_path):
    # fast BN running stats: at Keras momentum 0.99 a 4-batch epoch leaves them near their init values
    folder, (train_npy, train_csv), (eval_npy, eval_csv) = cache
    m = run_training(
        train_npy=train_npy, train_index=train_csv, eval_npy=eval_npy, eval_index=eval_csv, out_dir=tmp_path / "l",
        temperature=1.0, loss="ce", seed=0, model_cfg={**MODEL_CFG, "bn_momentum_keras": 0.5}, loss_cfg=LOSS_CFG,
        train_cfg={**TRAIN_CFG, "epochs": 10}, execution_cfg=EXEC_CFG, progress=False,
    )
    assert m["acc_overall"] > 0.8  # chance is 1/3
    hist = pd.read_csv(tmp_path / "l" / "history.csv")
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]


# --------------------------------------------------------------------------------- torch.compile


def test_compiled_run_matches_eager_and_really_compiles(tmp_path, monkeypatch, caplog):
    """train.compile on CPU (forced: it is CUDA-only by default) vs eager, same seed, 2 epochs of 3 steps;
    and a compiled run killed after epoch 1 and resumed equals the uninterrupted compiled run exactly.

    Tolerance: relative 1e-5 on the training loss and 1e-5 absolute on logits of ~0.1. Measured here:
    8e-8 relative and 7e-8 absolute — float32 rounding of reductions inductor orders differently — so
    the bound leaves 100x room yet fails on any real difference in the computation (a lost mixup, a
    missing L2 term or a wrong BatchNorm mode move the loss by >1e-3)."""
    import torch._dynamo.utils
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    import heatedasc.runtime as rt

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # torch's own place, not the repository
    folder = tmp_path / "cache"
    cache48 = (folder, write_cache(folder, "train", 48, seed=0), write_cache(folder, "evaluate", 30, seed=1))
    cfg = {"epochs": 2, "batch_size": 16, "deterministic": True}  # 3 equal batches: one training graph
    eager = train(cache48, tmp_path / "eager", train_cfg=cfg)
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    monkeypatch.setattr(rt, "COMPILE_DEVICES", ("cuda", "cpu"))
    with caplog.at_level("INFO", logger="heatedasc.train"):
        compiled = train(cache48, tmp_path / "compiled", train_cfg=cfg)
    # training step + evaluation of the 30 test rows + the final pass over the 48 training rows
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == 3
    assert "torch.compile default" in caplog.text and "torch.compile off" not in caplog.text
    loss_eager = pd.read_csv(tmp_path / "eager" / "history.csv")["train_loss"]
    loss_compiled = pd.read_csv(tmp_path / "compiled" / "history.csv")["train_loss"]
    assert np.allclose(loss_compiled, loss_eager, rtol=1e-5, atol=0)
    logits_eager = np.load(tmp_path / "eager" / "predictions.npz")["logits"]
    logits_compiled = np.load(tmp_path / "compiled" / "predictions.npz")["logits"]
    assert np.abs(logits_compiled - logits_eager).max() <= 1e-5
    assert compiled["params_trainable"] == eager["params_trainable"]

    killed = tmp_path / "killed"
    assert train(cache48, killed, train_cfg=cfg, stop_after_epoch=1) == {"stopped_after_epoch": 1}
    caplog.clear()
    with caplog.at_level("INFO", logger="heatedasc.train"):
        assert train(cache48, killed, train_cfg=cfg) == compiled
    assert f"resuming {killed} after epoch 1" in caplog.text
    assert np.array_equal(np.load(killed / "predictions.npz")["logits"], logits_compiled)
    pd.testing.assert_frame_equal(pd.read_csv(killed / "history.csv"),
                                  pd.read_csv(tmp_path / "compiled" / "history.csv"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == 3  # nothing recompiled


def test_compile_failure_stops_the_run_naming_the_switch(cache, tmp_path, monkeypatch):
    import heatedasc.runtime as rt

    def failing_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(rt, "COMPILE_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(rt, "compile_fn", lambda fn, mode: torch.compile(fn, backend=failing_backend, fullgraph=True))
    with pytest.raises(RuntimeError, match=r"(?s)^execution\.train\.compile: torch\.compile failed on the training step "
                                           r"\(BackendCompilerFailed: .*no C\+\+ compiler.*\); "
                                           r"set execution\.train\.compile: false to train without it$") as info:
        train(cache, tmp_path / "boom", train_cfg={"epochs": 1})
    assert isinstance(info.value.__cause__, torch._dynamo.exc.BackendCompilerFailed)
    assert not (tmp_path / "boom" / "metrics.json").exists()


def test_compile_cache_defaults_to_the_working_directory_and_an_explicit_one_wins(tmp_path, monkeypatch):
    import os

    import heatedasc.runtime as rt

    compiled = rt.Runtime(amp_dtype=None, channels_last=False, compile_mode="default")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with rt.compiler_settings(compiled, deterministic=True):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".cache" / "torchinductor")
        assert torch._inductor.config.deterministic and torch._dynamo.config.fail_on_recompile_limit_hit
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and not torch._inductor.config.deterministic
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/shared/inductor")
    with rt.compiler_settings(compiled, deterministic=False):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/shared/inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/shared/inductor"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    with rt.compiler_settings(rt.Runtime(None, False, None), deterministic=True):  # eager: nothing is set
        assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_runtime_is_eager_fp32_off_cuda_and_new_keys_are_checked(cache, tmp_path):
    import heatedasc.runtime as rt

    cfg = {**TRAIN_CFG, "amp": True, "amp_dtype": "fp16", "compile": True, "channels_last": True}
    assert rt.resolve_runtime(cfg, torch.device("cpu")) == rt.Runtime(None, False, None)
    assert rt.Runtime(torch.bfloat16, True, "default").describe() == {
        "precision": "bf16 autocast", "channels_last": True, "torch.compile": "default"}
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match=re.escape("train.amp_dtype must be one of ('bf16', 'fp16'), got 'fp8'")):
        train(cache, out, train_cfg={"amp_dtype": "fp8"})
    with pytest.raises(ValueError, match=re.escape(
            "execution.train.compile_mode must be one of ('default', 'reduce-overhead', 'max-autotune-no-cudagraphs'), "
            "got 'max-autotune'")):
        train(cache, out, train_cfg={"compile_mode": "max-autotune"})
    with pytest.raises(ValueError, match=re.escape("execution.train.compile must be true or false, got 'yes'")):
        train(cache, out, train_cfg={"compile": "yes"})
    with pytest.raises(ValueError, match=re.escape("execution.train.compile is missing from the training config")):
        run_training(
            train_npy=cache[1][0], train_index=cache[1][1], eval_npy=cache[2][0], eval_index=cache[2][1],
            out_dir=out, temperature=1.0, loss="ce", seed=0, model_cfg=MODEL_CFG, loss_cfg=LOSS_CFG,
            train_cfg=TRAIN_CFG, execution_cfg={k: v for k, v in EXEC_CFG.items() if k != "compile"}, progress=False)
    assert not out.exists()


def test_the_training_settings_are_read_from_the_config_schema(cache, tmp_path):
    """The schema is the one list of the train and execution.train keys and values: a new key there is required
    here, and its ranges are checked before any data is read."""
    from heatedasc.config import schema_node
    from heatedasc.runtime import AMP_DTYPES
    from heatedasc.train import TRAIN_KEYS

    assert set(TRAIN_KEYS) == set(TRAIN_CFG) and set(EXECUTION_KEYS) == set(EXEC_CFG)
    assert tuple(AMP_DTYPES) == tuple(schema_node("train.amp_dtype")["enum"])  # every name the schema allows has a dtype
    out = tmp_path / "bad"
    for override, message in (({"rho": 1.5}, "train.rho must be <= 1, got 1.5"),
                              ({"plateau_factor": 0}, "train.plateau_factor must be > 0, got 0"),
                              ({"batch_size": 0}, "train.batch_size must be >= 1, got 0"),
                              ({"eval_batch_size": 0}, "execution.train.eval_batch_size must be >= 1, got 0"),
                              ({"device": "tpu"}, "execution.train.device must be one of ('auto', 'cpu', 'cuda')")):
        with pytest.raises(ValueError, match=re.escape(message)):
            train(cache, out, train_cfg=override)
    with pytest.raises(ValueError, match=re.escape("loss.gamma must be >= 0, got -1.0")):  # the loss section too
        run_training(train_npy=cache[1][0], train_index=cache[1][1], eval_npy=cache[2][0], eval_index=cache[2][1],
                     out_dir=out, temperature=1.0, loss="focal", seed=0, model_cfg=MODEL_CFG,
                     loss_cfg={**LOSS_CFG, "gamma": -1.0}, train_cfg=TRAIN_CFG, execution_cfg=EXEC_CFG, progress=False)
    assert not out.exists()


def test_a_job_given_a_gpu_torch_cannot_use_stops_before_reading_any_data(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    gone = tmp_path / "gone" / "evaluate.npy"
    with pytest.raises(ValueError, match=re.escape(
            "execution.train.device is 'auto' and this job was given a GPU (SLURM_JOB_GPUS=0), but torch ")):
        train(cache, tmp_path / "run", train_cfg={"device": "auto"}, test=(gone, cache[2][1]))
    assert not (tmp_path / "run").exists()
    # the same job with an explicit CPU device trains (here: fails on the missing cache, as it should)
    with pytest.raises(ValueError, match=re.escape(f"{gone}: feature cache not found")):
        train(cache, tmp_path / "run", train_cfg={"device": "cpu"}, test=(gone, cache[2][1]))


def test_plateau_schedule_cuts_by_the_configured_factor():
    opt = torch.optim.Adadelta([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_plateau_scheduler(opt, factor=0.5, patience=1, min_delta=0.0)
    lrs = []
    for value in (0.5, 0.4, 0.4, 0.6, 0.6):
        sched.step(value)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == keras_plateau_lrs([0.5, 0.4, 0.4, 0.6, 0.6], lr=1.0, factor=0.5, patience=1, min_delta=0.0)
    assert lrs == [1.0, 0.5, 0.25, 0.25, 0.125]


def test_an_empty_epoch_draws_no_mixup_with_the_usual_dtypes():
    from heatedasc.train import draw_epoch_mixup

    lam, partner = draw_epoch_mixup(np.random.default_rng(0), 0, 4, 0.2)
    assert lam.shape == partner.shape == (0,) and lam.dtype == np.float32 and partner.dtype == np.int64
    lam, partner = draw_epoch_mixup(np.random.default_rng(0), 5, 4, 0.2)
    assert lam.dtype == np.float32 and partner.dtype == np.int64 and partner.tolist()[4] == 0
