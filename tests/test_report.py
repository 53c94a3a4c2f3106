"""The report stage from hand-made per-run outputs: exact table cells, the paper's numbers, figures for a
partial grid, paired significance, calibration, confusion sums, the no-runs error and the HTML report."""

import base64
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, headless_chromium

from heatedasc.report import REGISTRY, calibration, render_all, significance
from heatedasc.report.html import code_digest, recipe_digest
from heatedasc.report.runs import discover_runs, load_runs

SCENES = 10
DEVICES = ("a", "b", "c")


def base_config() -> dict:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["sweep"] = {"correction": ["ref_abc", "ref_bc", "none"], "temperature": [1, 10], "loss": ["focal", "ce"],
                    "seed": [0, 1, 2]}
    cfg["report"]["fig2_temperatures"] = [1, 10]
    return cfg


def confusion_for(seed: int, device: str) -> list:
    mat = np.zeros((SCENES, SCENES), dtype=int)
    np.fill_diagonal(mat, seed + 1 + DEVICES.index(device))
    mat[0, 1] = 1
    return mat.tolist()


CLIPS_PER_DEVICE = 100  # every accuracy with two decimals is a whole number of clips
LOCATIONS = 20  # recording locations of the fake test set, 5 segments each, every segment on devices a, b and c


def fake_test_clips(rng, accuracy: dict):
    """A fake test set in TAU's naming (`<scene>-<city>-<location>-<segment>-<device>.wav`) and logits whose
    argmax hits the label on exactly accuracy[d] of device d's clips (which clips: drawn from `rng`), so that
    predictions.npz gives the accuracies of metrics.json, as a real run's do."""
    scenes = ("airport", "bus", "metro", "park", "tram")
    names, devices, labels, logits = [], [], [], []
    for d in DEVICES:
        hits = round(accuracy[d] * CLIPS_PER_DEVICE)
        assert hits / CLIPS_PER_DEVICE == accuracy[d], f"accuracy {accuracy[d]} is not a whole number of clips"
        correct = np.zeros(CLIPS_PER_DEVICE, bool)
        correct[rng.permutation(CLIPS_PER_DEVICE)[:hits]] = True
        for j in range(CLIPS_PER_DEVICE):
            location, segment = divmod(j, CLIPS_PER_DEVICE // LOCATIONS)
            names.append(f"audio/{scenes[location % len(scenes)]}-city-{location}-{segment}-{d}.wav")
            devices.append(d)
            label = int(rng.integers(0, SCENES))
            z = rng.normal(size=SCENES)
            z[label] = z.max() + 1.0 if correct[j] else z.min() - 1.0
            labels.append(label)
            logits.append(z)
    return np.array(names), np.array(devices), np.array(labels), np.array(logits, dtype=np.float32)


def write_run(results: Path, correction, t, loss, seed, *, acc_a, acc_b, acc_c, ece=0.1, extras=True) -> Path:
    run = results / "runs" / correction / f"T{t}" / loss / f"seed{seed}"
    run.mkdir(parents=True)
    metrics = {"correction": correction, "temperature": float(t), "loss": loss, "seed": seed,
               "acc_a": acc_a, "acc_b": acc_b, "acc_c": acc_c, "avg_bc": (acc_b + acc_c) / 2, "acc_overall": acc_a,
               "ece": ece, "params_trainable": 70538, "params_keras": 70954, "best_epoch": 3, "selection": "test",
               "selection_note": "The epoch was chosen by the test set.",
               "confusion": {d: confusion_for(seed, d) for d in DEVICES},
               "class_acc": {f"s{k}": 0.5 for k in range(SCENES)}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if extras:
        rng = np.random.default_rng(seed)
        filenames, devices, labels, logits = fake_test_clips(rng, {"a": acc_a, "b": acc_b, "c": acc_c})
        z = logits / float(t)
        probs = np.exp(z - z.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        np.savez(run / "predictions.npz", logits=logits, probs=probs.astype(np.float32), labels=labels,
                 devices=devices, filenames=filenames)
        emb = rng.normal(size=(40, 64)).astype(np.float32)
        np.savez(run / "embeddings.npz", train_embeddings=emb, train_labels=rng.integers(0, SCENES, 40),
                 test_embeddings=emb[:20], test_labels=rng.integers(0, SCENES, 20))
        prov = {"record_version": 2, "rule": "train",
                "wildcards": {"correction": correction, "temperature": str(t), "loss": loss, "seed": str(seed)},
                "params": {"train": {"epochs": 3}},
                "inputs": {"train": {"results/features/x/train.npy": "a1" * 32},
                           "evaluate": {"results/features/x/evaluate.npy": "b2" * 32}},
                "code": {"heatedasc/train.py": "c0ffee" * 10 + "abcd"}, "packages": {"torch": "2.11.0"}}
        (run / "provenance.json").write_text(json.dumps(prov))
    return run


# A partial grid: ref_abc at T=1 (3 seeds, both losses) and T=10 (focal, 3 seeds); none at T=1 focal
# (2 seeds); ref_bc never ran. Accuracies chosen so the expected cells are easy to compute by hand.
ACC = {
    ("ref_abc", 1, "focal"): [(0.70, 0.60, 0.70), (0.72, 0.64, 0.72), (0.74, 0.62, 0.74)],
    ("ref_abc", 1, "ce"): [(0.71, 0.60, 0.60), (0.71, 0.60, 0.60), (0.71, 0.60, 0.60)],
    ("ref_abc", 10, "focal"): [(0.75, 0.70, 0.76), (0.73, 0.72, 0.76), (0.74, 0.71, 0.78)],
    ("none", 1, "focal"): [(0.70, 0.50, 0.52), (0.72, 0.54, 0.56)],
}


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The runs of a partial grid under src/, and the report `heatedasc report` renders from them under results/."""
    base = tmp_path_factory.mktemp("rep")
    src, results = base / "src", base / "results"
    for (c, t, loss), seeds in ACC.items():
        for seed, (a, b, cc) in enumerate(seeds):
            write_run(src, c, t, loss, seed, acc_a=a, acc_b=b, acc_c=cc, ece=0.05 * (seed + 1))
    # a run that left only its metrics.json (no predictions, embeddings or provenance record)
    write_run(src, "ref_bc", 10, "ce", 0, acc_a=0.5, acc_b=0.5, acc_c=0.5, extras=False)
    cfg = base_config()
    out = render_all(src, cfg, results)
    return results, cfg, out


def test_table2_cells_are_mean_sd_n_over_seeds_and_missing_is_never_zero(partial):
    results, _, _ = partial
    t2 = pd.read_csv(results / "tables" / "table2.csv").set_index("correction")
    abc = t2.loc["Ref.ABC"]
    assert abc["focal_Dev.A_mean"] == pytest.approx(72.0)
    assert abc["focal_Dev.A_sd"] == pytest.approx(2.0)  # ddof=1: values 70, 72, 74
    assert abc["focal_Dev.A_n"] == 3
    # Avg.BC per seed: 65, 68, 68 -> mean 67, sd sqrt(3)
    assert abc["focal_Avg.BC_mean"] == pytest.approx(67.0)
    assert abc["focal_Avg.BC_sd"] == pytest.approx(math.sqrt(3.0))
    assert abc["focal_Avg.BC_diff"] == pytest.approx(67.0 - 67.6)
    assert abc["ce_Dev.A_sd"] == pytest.approx(0.0) and abc["ce_Dev.A_n"] == 3
    none = t2.loc["NoCorrection"]
    assert none["focal_Dev.A_mean"] == pytest.approx(71.0) and none["focal_Dev.A_n"] == 2
    assert none["focal_Dev.A_sd"] == pytest.approx(math.sqrt(2.0))
    assert none["ce_Dev.A_n"] == 0 and math.isnan(none["ce_Dev.A_mean"])  # empty, not 0
    bc = t2.loc["Ref.BC"]
    assert all(bc[f"{l}_{m}_n"] == 0 for l in ("focal", "ce") for m in ("Dev.A", "Avg.BC"))
    assert all(math.isnan(bc[f"{l}_{m}_mean"]) for l in ("focal", "ce") for m in ("Dev.A", "Avg.BC"))

    md = (results / "tables" / "table2.md").read_text()
    abc_row = next(l for l in md.splitlines() if l.startswith("| Ref.ABC |"))
    assert "| 72.0 ± 2.0 (3) | 72.3 | -0.3 |" in abc_row
    assert "| 67.0 ± 1.7 (3) | 67.6 | -0.6 |" in abc_row
    bc_row = next(l for l in md.splitlines() if l.startswith("| Ref.BC |"))
    assert bc_row.count("missing") == 4 and " 0.0" not in bc_row
    assert "leaks the test set" in md


def test_summary_metrics_are_per_correction_and_loss(partial):
    results, _, _ = partial
    summary = json.loads((results / "metrics.json").read_text())
    assert summary["n_runs"] == sum(len(v) for v in ACC.values()) + 1
    abc_focal = summary["ref_abc"]["focal"]
    assert abc_focal["avg_bc_T1"] == pytest.approx(0.67) and abc_focal["acc_a_T1"] == pytest.approx(0.72)
    assert abc_focal["n_seeds_T1"] == 3
    assert abc_focal["best_T"] == 10.0 and abc_focal["best_avg_bc"] == pytest.approx((0.73 + 0.74 + 0.745) / 3)
    assert summary["ref_abc"]["ce"]["avg_bc_T1"] == pytest.approx(0.60)  # never pooled with focal
    assert summary["none"]["focal"]["avg_bc_T1"] == pytest.approx(0.53) and "ce" not in summary["none"]
    assert summary["best_run"] == {"correction": "ref_abc", "loss": "focal", "temperature": 10.0, "seed": 2,
                                   "avg_bc": pytest.approx(0.745), "acc_a": pytest.approx(0.74)}


def test_table3_quoted_rows_and_reproduction_rows(partial):
    results, _, _ = partial
    t3 = pd.read_csv(results / "tables" / "table3.csv")
    quoted = t3[t3["source"] == "quoted from paper"]
    assert len(quoted) == 7 and (t3["source"] == "this reproduction").sum() == 5
    t10 = t3[t3["system"] == "Base_model_Ref.ABC_T10"].iloc[0]
    assert t10["Dev.A_mean"] == pytest.approx(74.0) and t10["Dev.A_sd"] == pytest.approx(1.0)
    assert t10["Dev.C_mean"] == pytest.approx(76.6666667) and t10["Dev.C_n"] == 3
    assert t10["params"] == 70954
    t15 = t3[t3["system"] == "Base_model_Ref.ABC_T15"].iloc[0]
    assert t15["Avg.BC_n"] == 0 and math.isnan(t15["Avg.BC_mean"])
    md = (results / "tables" / "table3.md").read_text()
    t15_row = next(l for l in md.splitlines() if "Ref.ABC_T15" in l)
    assert t15_row.count("missing") == 5  # params + 4 metrics
    assert "| DCASE2019 baseline | quoted from paper |" in md


def paper_numbers_of_the_doc():
    """docs/reproduction.md §9, the one copy of the published numbers outside params.yaml (typed in from the paper):
    Table 2 as {(correction label, loss): (Dev.A, Avg.BC)}, Table 3 as {system: (Dev.A, Dev.B, Dev.C, Avg.BC,
    parameters)} with None where the paper prints none, its quoted systems and this project's rows apart."""
    import re

    import yaml
    from test_docs import DOC, markdown_tables

    section = DOC.read_text().split("\n## §9 ", 1)[1].split("\n## ", 1)[0]
    (h2, rows2), (h3, rows3) = markdown_tables(section)
    assert h2[:2] == ["loss / correction", "value"] and h3[0] == "system", (h2, h3)
    table2 = {}
    for _, (what, value, _key) in rows2:
        loss, label = (w.strip() for w in what.split(","))
        cell = yaml.safe_load(value.strip("`"))
        table2[(label, loss.lower())] = (cell["dev_a"], cell["avg_bc"])

    def number(cell: str):
        if cell in ("–", "-"):
            return None
        scale = {"M": 1e6}.get(cell[-1], 1)
        return float(cell.rstrip("M").replace(",", "")) * scale

    quoted, ours = {}, {}
    for _, cells in rows3:
        name = re.sub(r"\s*(\[\d+\]|\(quoted\))", "", cells[0])
        (quoted if "(quoted)" in cells[0] else ours)[name] = tuple(map(number, cells[1:6]))
    return table2, ours, quoted


def _same(v, expected):
    return math.isnan(v) if expected is None else v == pytest.approx(expected)


def test_paper_numbers_in_the_tables_are_those_of_reproduction_doc_section_9(partial):
    results, _, _ = partial
    table2, ours, quoted = paper_numbers_of_the_doc()
    assert len(table2) == 6 and len(ours) == 5 and len(quoted) == 7  # the doc's tables as the parser reads them
    t2 = pd.read_csv(results / "tables" / "table2.csv").set_index("correction")
    for (corr, loss), (dev_a, avg_bc) in table2.items():
        assert t2.loc[corr, f"{loss}_Dev.A_paper"] == pytest.approx(dev_a), (corr, loss)
        assert t2.loc[corr, f"{loss}_Avg.BC_paper"] == pytest.approx(avg_bc), (corr, loss)
    t3 = pd.read_csv(results / "tables" / "table3.csv").set_index("system")
    for name, values in ours.items():
        got = [t3.loc[f"Base_model_{name}", f"{m}_paper"] for m in ("Dev.A", "Dev.B", "Dev.C", "Avg.BC")]
        assert got == pytest.approx(list(values[:4])), name
    for name, (a, b, c, bc, params) in quoted.items():
        row = t3.loc[name]
        for col, exp in zip(("Dev.A_mean", "Dev.B_mean", "Dev.C_mean", "Avg.BC_mean", "params"), (a, b, c, bc, params)):
            assert _same(float(row[col]), exp), (name, col)
    md = (results / "tables" / "table2.md").read_text()
    assert "| 70.27 |" in md  # printed as published


def test_every_artefact_is_rendered_for_a_partial_grid(partial):
    results, _, out = partial
    assert set(out) == {key for artefact in REGISTRY for key in artefact.outputs}
    for key, p in out.items():
        if key == "dvc_metrics":  # a folder: one file per correction
            assert sorted(f.name for f in Path(p).iterdir()) == ["none.json", "ref_abc.json", "ref_bc.json"]
            continue
        assert Path(p).stat().st_size > 0, key
        if p.endswith(".png"):
            assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    cal = (results / "tables" / "calibration.md").read_text()
    ref_bc = next(l for l in cal.splitlines() if l.startswith("| focal | Ref.BC |"))
    assert ref_bc.count("missing") == 2


def test_calibration_table_and_ece_match_the_training_definition(partial, tmp_path):
    from heatedasc.train import expected_calibration_error

    results, _, _ = partial
    cal = pd.read_csv(results / "tables" / "calibration.csv")
    row = cal[(cal["correction"] == "ref_abc") & (cal["temperature"] == 1) & (cal["loss"] == "focal")].iloc[0]
    assert row["ece_mean"] == pytest.approx(10.0) and row["ece_sd"] == pytest.approx(5.0) and row["n"] == 3
    assert row["n_pooled_runs"] == 3
    bare = cal[(cal["correction"] == "ref_bc") & (cal["temperature"] == 10) & (cal["loss"] == "ce")].iloc[0]
    assert bare["n"] == 1 and bare["n_pooled_runs"] == 0 and math.isnan(bare["ece_pooled"])
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(SCENES) * 0.3, size=500)
    labels = rng.integers(0, SCENES, 500)
    bins, ece = calibration.reliability(probs, labels)
    assert ece == pytest.approx(expected_calibration_error(probs, labels))
    assert len(bins) == 15 and bins["count"].sum() == 500


def test_confusion_figure_labels_every_class_by_its_full_name(monkeypatch, tmp_path):
    """No class name is cut (street_pedestrian and shopping_mall were cut to 10 characters), and every label fits
    inside the saved figure."""
    import numpy as np

    from heatedasc.report import confusion
    from heatedasc.tau import SCENES

    saved = {}

    def keep(fig, path, **kw):
        fig.canvas.draw()
        saved["fig"] = fig

    monkeypatch.setattr(confusion, "save_figure", keep)
    monkeypatch.setattr(confusion.pyplot(), "close", lambda fig: None)
    mats = {d: np.eye(len(SCENES), dtype=int) * 3 for d in DEVICES}
    confusion.plot_confusion([{"name": "Ref.ABC_T10", "n_seeds": 2, "matrices": mats}], tmp_path / "c.png",
                             class_names=list(SCENES))
    fig = saved["fig"]
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            assert [t.get_text() for t in ticks] == [c.replace("_", " ") for c in SCENES]
            for t in ticks:  # inside the figure, not cut at its edge
                box = t.get_window_extent(renderer)
                assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, t


def test_confusion_matrices_are_summed_over_seeds(partial):
    results, _, _ = partial
    conf = pd.read_csv(results / "tables" / "confusion.csv")
    t10 = conf[conf["name"] == "Ref.ABC_T10"]
    assert set(t10["device"]) == set(DEVICES) and t10["n_seeds"].iloc[0] == 3
    # diagonal per seed s and device d: s + 1 + index(d); seeds 0, 1, 2 -> 6 + 3 * index(d)
    for d in DEVICES:
        diag = t10[(t10["device"] == d) & (t10["true"] == t10["predicted"])]["count"]
        assert set(diag) == {6 + 3 * DEVICES.index(d)}
        off = t10[(t10["device"] == d) & (t10["true"] != t10["predicted"])]["count"]
        assert off.sum() == 3  # one [0, 1] error per seed
    # NoCorrection_T1 ran 2 seeds
    assert conf[conf["name"] == "NoCorrection_T1"]["n_seeds"].iloc[0] == 2


def test_paired_significance_equals_a_hand_computation():
    idx = [0, 1, 2]
    a = pd.Series([70.0, 74.0, 72.0], index=idx)
    b = pd.Series([60.0, 66.0, 61.0, 99.0], index=idx + [3])  # seed 3 has no partner: not paired
    res = significance.paired_difference(a, b, confidence=0.95)
    diffs = [10.0, 8.0, 11.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert res["n_pairs"] == 3 and res["seeds"] == "0 1 2"
    assert res["mean_diff"] == pytest.approx(mean)
    assert res["sd_diff"] == pytest.approx(sd)
    assert res["t_crit"] == pytest.approx(4.302652729911275)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert res["verdict"] == "A > B: the 95% interval (seeds) excludes 0"
    below = significance.paired_difference(b.iloc[:3], a, confidence=0.95)
    assert below["verdict"] == "A < B: the 95% interval (seeds) excludes 0"
    spread = significance.paired_difference(pd.Series([70.0, 60.0, 66.0]), pd.Series([65.0, 64.0, 64.0]))
    assert spread["verdict"] == "not significant: the 95% interval (seeds) includes 0"


def test_fewer_than_three_pairs_get_no_interval_and_no_verdict():
    # two seeds: t_{0.975,1} = 12.7; the old report called such cells significant (or not) anyway
    two = significance.paired_difference(pd.Series([70.0, 60.0], index=[0, 1]), pd.Series([65.0, 64.0], index=[0, 1]))
    assert two["verdict"] == "not resolvable (n < 3 pairs)"
    assert two["n_pairs"] == 2 and two["mean_diff"] == pytest.approx(0.5)
    assert two["sd_diff"] == pytest.approx(math.sqrt(40.5))  # the spread is still reported
    assert all(math.isnan(two[k]) for k in ("t_crit", "ci_low", "ci_high"))
    none = significance.paired_difference(pd.Series([70.0], index=[0]), pd.Series([60.0, 61.0], index=[1, 2]))
    assert none["verdict"] == "not resolvable (n < 3 pairs)" and none["n_pairs"] == 0 and math.isnan(none["mean_diff"])
    one = significance.paired_difference(pd.Series([70.0], index=[0]), pd.Series([60.0], index=[0]))
    assert one["verdict"] == "not resolvable (n < 3 pairs)" and one["mean_diff"] == pytest.approx(10.0)
    assert math.isnan(one["sd_diff"]) and math.isnan(one["ci_low"])


def test_a_zero_width_interval_is_never_called_significant():
    same = significance.paired_difference(pd.Series([70.0, 72.0, 74.0]), pd.Series([60.0, 62.0, 64.0]))
    assert same["sd_diff"] == 0.0 and same["ci_low"] == same["ci_high"] == 10.0
    assert same["verdict"] == "not resolvable (sd = 0: the same difference for every seed)"
    # differences equal up to float rounding (30 and 30.000000000000004) are no spread either
    rounded = significance.paired_difference(pd.Series([0.3, 0.1 + 0.2, 0.3]) * 100, pd.Series([0.0, 0.0, 0.0]))
    assert 0 < rounded["sd_diff"] < 1e-12
    assert rounded["verdict"] == "not resolvable (sd = 0: the same difference for every seed)"


@pytest.mark.parametrize("confidence, df, expected", [
    (0.95, 1, 12.706204736), (0.95, 2, 4.302652729), (0.95, 4, 2.776445105), (0.95, 30, 2.042272456),
    (0.95, 60, 2.000297822), (0.99, 10, 3.169272673),
])
def test_t_quantile_is_students_t(confidence, df, expected):
    assert significance.t_quantile(confidence, df) == pytest.approx(expected, abs=1e-8)


def test_t_quantile_needs_a_degree_of_freedom():
    with pytest.raises(ValueError, match="t quantile needs df >= 1, got 0"):
        significance.t_quantile(0.95, 0)


def test_significance_table_pairs_the_configured_comparisons(partial):
    results, cfg, _ = partial
    sig = pd.read_csv(results / "tables" / "significance.csv").set_index("comparison")
    assert list(sig.index) == [c["name"] for c in cfg["report"]["comparisons"]]
    abc_vs_none = sig.loc["spectrum correction (Ref.ABC) vs none"]
    # seeds 0, 1 in both; Avg.BC ref_abc 65, 68; none 51, 55 -> diffs 14, 13
    assert abc_vs_none["n_pairs"] == 2 and abc_vs_none["mean_diff"] == pytest.approx(13.5)
    assert abc_vs_none["sd_diff"] == pytest.approx(math.sqrt(0.5))
    assert abc_vs_none["verdict"] == "not resolvable (n < 3 pairs)"
    assert all(math.isnan(abc_vs_none[k]) for k in ("t_crit", "ci_low", "ci_high"))
    assert sig.loc["spectrum correction (Ref.BC) vs none", "verdict"] == "not resolvable (n < 3 pairs)"
    # 3 seeds: Avg.BC at T=10 73, 74, 74.5 vs T=1 65, 68, 68 -> diffs 8, 6, 6.5
    hot = sig.loc["heated-up softmax (Ref.ABC) T=10 vs T=1"]
    assert hot["n_pairs"] == 3 and hot["mean_diff"] == pytest.approx(6.8333333)
    assert hot["verdict"] == "A > B: the 95% interval (seeds and test clips) excludes 0" and hot["total_low"] > 0
    # the seed interval is the t-interval; the verdict's interval adds the test set's sampling error in variance
    seed_half = 4.302652729911275 * hot["sd_diff"] / math.sqrt(3)
    assert (hot["ci_low"], hot["ci_high"]) == pytest.approx((hot["mean_diff"] - seed_half, hot["mean_diff"] + seed_half))
    assert hot["se_test"] > 0 and hot["n_locations"] == LOCATIONS and hot["n_resamples"] == significance.BOOTSTRAP_RESAMPLES
    both = math.sqrt(seed_half ** 2 + (1.959963984540054 * hot["se_test"]) ** 2)
    assert (hot["total_low"], hot["total_high"]) == pytest.approx((hot["mean_diff"] - both, hot["mean_diff"] + both))
    assert (hot["test_low"], hot["test_high"]) == pytest.approx(
        (hot["mean_diff"] - 1.959963984540054 * hot["se_test"], hot["mean_diff"] + 1.959963984540054 * hot["se_test"]))
    # two seeds: a test-set interval, but no seed interval and so no verdict
    assert abc_vs_none["se_test"] > 0 and math.isnan(abc_vs_none["total_low"])
    md = (results / "tables" / "significance.md").read_text()
    assert "not resolvable (n < 3 pairs)" in md and "+13.5" in md
    row = next(l for l in md.splitlines() if l.startswith("| spectrum correction (Ref.ABC) vs none"))
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    test_half = 1.959963984540054 * abc_vs_none["se_test"]
    assert cells[4:] == ["2 (0 1)", "66.5", "53.0", "+13.5", "–", f"[{13.5 - test_half:+.1f}, {13.5 + test_half:+.1f}]",
                         "–", "not resolvable (n < 3 pairs)", "–", "Table 2: 67.6 vs 58.6"]


def test_location_bootstrap_matches_the_closed_form_variance():
    """Every location holds one b and one c clip (parallel recordings), so each resample has K clips of each device
    and the bootstrap variance of the Avg.BC difference is var_pop(per-location mean) / K, exactly in expectation."""
    rng = np.random.default_rng(5)
    k = 40
    diff = rng.choice([-1.0, 0.0, 1.0], size=2 * k, p=[0.2, 0.5, 0.3])
    devices = np.array(["b"] * k + ["c"] * k)
    units = np.array([f"city-{i}" for i in range(k)] * 2)
    reps = significance.location_bootstrap(diff, devices, units, {"b": 0.5, "c": 0.5}, resamples=20000, seed=1)
    per_location = (diff[:k] + diff[k:]) / 2
    assert reps.std(ddof=1) == pytest.approx(math.sqrt(per_location.var() / k), rel=0.03)
    assert reps.mean() == pytest.approx(per_location.mean(), abs=4 * per_location.std() / math.sqrt(k * 20000))
    # one clip per location: the ordinary clip bootstrap, var_pop / n
    one = significance.location_bootstrap(diff[:k], devices[:k], units[:k], {"b": 1.0}, resamples=20000, seed=2)
    assert one.std(ddof=1) == pytest.approx(diff[:k].std() / math.sqrt(k), rel=0.03)


def test_location_bootstrap_resamples_locations_not_clips():
    """Clips of one location move together: when every location's clips agree, the spread is that of K locations,
    much wider than the clip bootstrap of the same numbers would claim."""
    k, per = 10, 20
    diff = np.repeat(np.tile([1.0, 0.0], k // 2), per)  # half the locations all right, half all wrong
    devices, units = np.full(k * per, "a"), np.repeat([f"city-{i}" for i in range(k)], per)
    by_location = significance.location_bootstrap(diff, devices, units, {"a": 1.0}, resamples=20000, seed=3)
    assert by_location.std(ddof=1) == pytest.approx(math.sqrt(0.25 / k), rel=0.03)
    by_clip = significance.location_bootstrap(diff, devices, np.arange(k * per).astype(str), {"a": 1.0}, resamples=20000, seed=3)
    assert by_clip.std(ddof=1) == pytest.approx(math.sqrt(0.25 / (k * per)), rel=0.03)


def test_location_bootstrap_is_paired_and_seeded():
    rng = np.random.default_rng(0)
    diff, devices = rng.choice([-1.0, 0.0, 1.0], 60), np.repeat(["a", "b", "c"], 20)
    units = np.array([f"city-{i % 7}" for i in range(60)])
    weights = significance.DEVICE_WEIGHTS["Avg.BC"]
    first = significance.location_bootstrap(diff, devices, units, weights)
    assert len(first) == significance.BOOTSTRAP_RESAMPLES and np.array_equal(first, significance.location_bootstrap(
        diff, devices, units, weights))  # the fixed seed: the same replicates every time
    assert not np.array_equal(first, significance.location_bootstrap(diff, devices, units, weights, seed=1))
    # A and B right on the same clips: a zero difference in every resample, whatever is drawn
    zero = significance.location_bootstrap(np.zeros(60), devices, units, {"a": 1.0})
    assert np.array_equal(zero, np.zeros(significance.BOOTSTRAP_RESAMPLES))


def test_test_set_sampling_equals_a_plain_numpy_bootstrap_of_the_runs_clips(partial):
    """se_test of a comparison against a bootstrap written out here: the per-clip seed-mean difference from the
    runs' predictions.npz, locations drawn with numpy's integers, accuracies per device recomputed."""
    results, cfg, _ = partial
    sig = pd.read_csv(results / "tables" / "significance.csv").set_index("comparison")
    src = results.parent / "src" / "runs" / "ref_abc"
    diffs = []
    for seed in range(3):
        hot = np.load(src / "T10" / "focal" / f"seed{seed}" / "predictions.npz")
        cold = np.load(src / "T1" / "focal" / f"seed{seed}" / "predictions.npz")
        assert list(hot["filenames"]) == list(cold["filenames"])
        diffs.append((hot["logits"].argmax(1) == hot["labels"]).astype(float)
                     - (cold["logits"].argmax(1) == cold["labels"]).astype(float))
    diff, devices = np.mean(diffs, axis=0) * 100, hot["devices"]
    location = np.array(["-".join(name.split("/")[-1].split("-")[1:3]) for name in hot["filenames"]])
    names = sorted(set(location))
    rng = np.random.default_rng(11)
    reps = []
    for _ in range(4000):
        drawn = np.concatenate([np.flatnonzero(location == names[i]) for i in rng.integers(0, len(names), len(names))])
        reps.append(np.mean([diff[drawn][devices[drawn] == d].mean() for d in ("b", "c")]))
    assert sig.loc["heated-up softmax (Ref.ABC) T=10 vs T=1", "se_test"] == pytest.approx(np.std(reps, ddof=1), rel=0.08)
    assert np.mean(reps) == pytest.approx(sig.loc["heated-up softmax (Ref.ABC) T=10 vs T=1", "mean_diff"], abs=0.3)


def test_the_family_verdict_is_bonferroni_over_the_comparisons_with_an_interval(partial):
    results, _, _ = partial
    sig = pd.read_csv(results / "tables" / "significance.csv").set_index("comparison")
    judged = sig[sig["total_low"].notna()]
    assert len(judged) == 3 and (sig["family_k"] == 3).all()
    assert sig["family_confidence"].iloc[0] == pytest.approx(1 - 0.05 / 3)
    row = sig.loc["focal vs cross-entropy loss (Ref.ABC, T=1)"]
    t_fam, z_fam = 7.648803937915553, 2.3939797998185104  # t_{1 - 0.05/6, 2}, z_{1 - 0.05/6}
    half = math.sqrt((t_fam * row["sd_diff"] / math.sqrt(3)) ** 2 + (z_fam * row["se_test"]) ** 2)
    assert (row["family_low"], row["family_high"]) == pytest.approx((row["mean_diff"] - half, row["mean_diff"] + half))
    assert row["verdict"].startswith("A > B") and row["family_verdict"] == (
        "not significant: the 98.33% interval (Bonferroni, k = 3) includes 0")  # significant alone, not in the family
    assert sig.loc["heated-up softmax (Ref.ABC) T=10 vs T=1", "family_verdict"].startswith("A > B")
    assert (sig.loc[sig["total_low"].isna(), "family_verdict"] == "–").all()


def test_significance_md_states_its_method_policy_and_limits(partial):
    results, _, _ = partial
    md = (results / "tables" / "significance.md").read_text()
    assert "paired bootstrap over its recording locations" in md and "Multiple comparisons:" in md
    assert "judged at level 1 − (1 − 0.95)/k" in md and "Here k = 3." in md
    assert "each run's epoch was chosen as the best on this same test set" in md  # the runs used selection test
    assert md.rstrip().endswith("The epoch was chosen by the test set.")  # the selection note, as Tables 2 and 3
    assert "leaks the test set" in md


def test_predictions_that_do_not_give_the_metrics_are_refused_and_missing_ones_are_named(tmp_path):
    accs = [(0.70, 0.60, 0.70), (0.72, 0.64, 0.72), (0.74, 0.62, 0.74)]
    for seed, (a, b, c) in enumerate(accs):
        write_run(tmp_path, "ref_abc", 10, "focal", seed, acc_a=a, acc_b=b + (0.10, 0.12, 0.08)[seed], acc_c=c)
        write_run(tmp_path, "ref_abc", 1, "focal", seed, acc_a=a, acc_b=b, acc_c=c, extras=seed != 2)
    runs = load_runs(discover_runs(tmp_path))
    comparison = [{"name": "hot", "metric": "Avg.BC", "a": {"correction": "ref_abc", "temperature": 10, "loss": "focal"},
                   "b": {"correction": "ref_abc", "temperature": 1, "loss": "focal"}}]
    row = significance.significance_table(runs, comparison).iloc[0]
    assert math.isnan(row["se_test"]) and row["total_low"] == row["ci_low"]  # seed 2 of B has no predictions.npz
    assert row["verdict"] == ("A > B: the 95% interval (seeds) excludes 0; seed spread only: no predictions.npz, so "
                              "test-set sampling is not included")
    metrics = tmp_path / "runs" / "ref_abc" / "T10" / "focal" / "seed1" / "metrics.json"
    m = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**m, "acc_c": 0.73, "avg_bc": (m["acc_b"] + 0.73) / 2}))
    with pytest.raises(ValueError, match=re.escape(
            f"{metrics.parent}/predictions.npz gives device c an accuracy of 0.72, but its metrics.json says "
            "acc_c = 0.73: the two files are not of one run")):
        significance.significance_table(load_runs(discover_runs(tmp_path)), comparison)


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "results" / "runs").mkdir(parents=True)
    with pytest.raises(ValueError, match="no training runs found"):
        discover_runs(tmp_path / "results")
    from heatedasc.cli import main

    code = main(["report", "--results", str(tmp_path / "results"), "--configfile", str(REPO / "params.yaml")])
    assert code == 1
    assert "heatedasc report: error: " in capsys.readouterr().err
    assert not (tmp_path / "results" / "tables").exists()


def test_cli_rejects_a_bad_config_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"report": {"confidence": 2}}))
    from heatedasc.cli import main

    assert main(["report", "--results", str(tmp_path), "--configfile", str(REPO / "params.yaml"), str(bad)]) == 1
    assert "report.confidence" in capsys.readouterr().err


def test_every_result_table_states_its_unit_in_its_title(partial):
    """A number without its unit is ambiguous here (fractions in metrics.json, % in tables, pp in differences)."""
    _, _, out = partial
    for key in ("table2_md", "table3_md", "calibration_md", "significance_md"):
        title = Path(out[key]).read_text().splitlines()[0]
        assert "(%)" in title or "in %" in title, (key, title)


def test_html_report_contains_every_artefact(partial):
    results, cfg, out = partial
    page = Path(out["report_html"]).read_text()
    for key in ("fig3", "fig2", "reliability", "confusion"):
        b64 = base64.b64encode(Path(out[key]).read_bytes()).decode()
        assert f'<section id="{key}">' in page and b64 in page, key
    for key in ("table2_md", "table3_md", "calibration_md", "significance_md"):
        assert f'<section id="{key}">' in page, key
    assert "<td>72.0 ± 2.0 (3)</td>" in page  # a Table 2 cell
    assert "Base_model_Ref.ABC_T10" in page and "quoted from paper" in page
    assert "spectrum correction (Ref.ABC) vs none" in page
    assert "leaks the test set" in page
    assert '<section id="config">' in page and "comparisons:" in page and "fig3_loss: focal" in page
    lineage = page.split('<section id="lineage">', 1)[1].split("</section>", 1)[0]
    assert lineage.count("<tr><td><code>") == sum(len(v) for v in ACC.values())
    assert "ref_bc/T10/ce/seed0/provenance.json: no provenance record" in lineage
    record = json.loads((results.parent / "src" / "runs" / "ref_abc" / "T10" / "focal" / "seed2" / "provenance.json")
                        .read_text())
    assert "ref_abc/10/focal/2" in lineage and recipe_digest(record)[:12] in lineage
    assert code_digest(record)[:12] in lineage  # one digest of the code closure
    assert recipe_digest(record) == hashlib.sha256(json.dumps(
        {k: record.get(k) for k in ("rule", "wildcards", "params", "code", "cpu", "inputs")}, sort_keys=True,
        separators=(",", ":")).encode()).hexdigest()
    assert "2.11.0" in lineage and "heatedasc lineage results/runs/" in lineage  # where the when/where lives
    assert ("a1" * 6) in lineage and ("b2" * 6) in lineage  # feature-cache hashes
    for name in ("table2.csv", "calibration.csv", "significance.csv"):
        assert f">{name}</a>" in page
    assert "src=\"results/" not in page  # figures are embedded, not linked


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_html_report_renders_every_artefact_in_a_headless_browser(partial, tmp_path):
    """Chromium opens the page: every figure decodes at its PNG's own size, every table has its rows, and
    the missing Ref.BC cells read 'missing'. The screenshot is kept in the test's tmp dir to look at."""
    _, _, out = partial
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(Path(out["report_html"]).resolve().as_uri(), wait_until="load")
        images = page.eval_on_selector_all("section img", """els => els.map(e => ({
            section: e.closest('section').id, complete: e.complete, w: e.naturalWidth, h: e.naturalHeight,
            shown: e.getBoundingClientRect().width}))""")
        tables = page.eval_on_selector_all("section table", """els => els.map(e => ({
            section: e.closest('section').id, rows: e.tBodies[0] ? e.tBodies[0].rows.length : 0,
            text: e.innerText}))""")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'report.png'}")
        config_shown = page.is_visible("#config pre")
        # at a phone's width: the page itself never scrolls sideways (wide tables scroll in their own box)
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(Path(out["report_html"]).resolve().as_uri(), wait_until="load")
        phone_overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        phone.screenshot(path=str(tmp_path / "report-phone.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'report-phone.png'}")
    decoded = {i["section"]: i for i in images}
    for key in ("fig3", "fig2", "reliability", "confusion"):
        img = decoded[key]
        assert img["complete"] and (img["w"], img["h"]) == png_size(out[key]), (key, img)
        assert img["shown"] > 100, (key, img)
    by_section = {t["section"]: t for t in tables}
    assert by_section["table2_md"]["rows"] == 3  # Ref.ABC, Ref.BC, NoCorrection
    assert "72.0 ± 2.0 (3)" in by_section["table2_md"]["text"]
    ref_bc = next(l for l in by_section["table2_md"]["text"].splitlines() if l.startswith("Ref.BC"))
    assert ref_bc.count("missing") == 4
    assert by_section["table3_md"]["rows"] == len(yaml.safe_load((REPO / "params.yaml").read_text())["paper"]
                                                  ["table3_quoted"]) + 5
    # every run with a provenance record, plus the ref_bc run that has none (listed as such)
    assert by_section["lineage"]["rows"] == sum(len(v) for v in ACC.values()) + 1
    for key in ("calibration_md", "significance_md"):
        assert by_section[key]["rows"] > 0, key
    assert png_size(tmp_path / "report.png")[1] > 2000  # the whole page, not a blank first screen
    assert not config_shown  # the effective configuration is collapsed until asked for
    assert phone_overflow <= 0, f"the page is {phone_overflow} px wider than a 390 px screen"
    assert png_size(tmp_path / "report-phone.png")[0] == 390


def test_calibration_table_from_the_runs_by_hand(partial):
    """calibration_table and calibration_frame called here (not only through the module's rendered files): per
    cell the per-seed ECE in %, mean ± sd (ddof=1) and n; the pooled ECE, accuracy and confidence of the
    concatenated predictions; 'missing' and a lone run without predictions."""
    from heatedasc.metrics import expected_calibration_error
    from heatedasc.report.runs import discover_runs, load_runs

    results, _, _ = partial
    runs = load_runs(discover_runs(results.parent / "src"))
    table = calibration.calibration_table(runs)
    assert list(table.columns) == ["correction", "temperature", "loss", "ece_mean", "ece_sd", "n", "n_pooled_runs",
                                   "ece_pooled", "accuracy_pooled", "confidence_pooled"]
    assert [tuple(r) for r in table[["correction", "temperature", "loss"]].itertuples(index=False)] == sorted(
        [("none", 1.0, "focal"), ("ref_abc", 1.0, "ce"), ("ref_abc", 1.0, "focal"), ("ref_abc", 10.0, "focal"),
         ("ref_bc", 10.0, "ce")])
    row = table[(table["correction"] == "ref_abc") & (table["temperature"] == 1) & (table["loss"] == "focal")].iloc[0]
    assert (row["ece_mean"], row["ece_sd"], row["n"], row["n_pooled_runs"]) == pytest.approx((10.0, 5.0, 3, 3))
    cell = runs[(runs["correction"] == "ref_abc") & (runs["temperature"] == 1) & (runs["loss"] == "focal")]
    preds = [np.load(Path(d) / "predictions.npz") for d in cell["run_dir"]]
    probs = np.concatenate([p["probs"] for p in preds])
    labels = np.concatenate([p["labels"] for p in preds])
    assert row["ece_pooled"] == pytest.approx(100 * expected_calibration_error(probs, labels), rel=1e-6)  # float32 probs
    assert row["accuracy_pooled"] == pytest.approx(100 * np.mean(probs.argmax(1) == labels), rel=1e-12)
    assert row["confidence_pooled"] == pytest.approx(100 * np.mean(probs.max(1)), rel=1e-6)
    lone = table[(table["correction"] == "ref_bc")].iloc[0]
    assert lone["n"] == 1 and lone["n_pooled_runs"] == 0 and math.isnan(lone["ece_sd"])
    assert lone["ece_mean"] == pytest.approx(10.0) and math.isnan(lone["ece_pooled"])
    assert math.isnan(lone["accuracy_pooled"]) and math.isnan(lone["confidence_pooled"])
    shuffled = calibration.calibration_table(runs.sample(frac=1.0, random_state=4))  # cells sorted whatever the order
    pd.testing.assert_frame_equal(shuffled, table)
    empty = calibration.calibration_table(runs.iloc[:0])
    assert empty.empty and list(empty.columns) == list(table.columns)
    rng = np.random.default_rng(2)
    p5 = rng.dirichlet(np.ones(4), size=50)
    l5 = rng.integers(0, 4, 50)
    bins, ece = calibration.reliability(p5, l5, n_bins=5)
    assert len(bins) == 5 and ece == pytest.approx(expected_calibration_error(p5, l5, n_bins=5))
    frame = calibration.calibration_frame(table, corrections=["ref_abc", "none"], temperatures=[1, 10],
                                          losses=["focal"], labels={"ref_abc": "Ref.ABC"})
    assert list(frame.columns) == ["loss", "correction", "T=1", "T=10"]
    by = {(r["loss"], r["correction"]): (r["T=1"], r["T=10"]) for _, r in frame.iterrows()}
    assert by[("focal", "Ref.ABC")] == ("10.0 ± 5.0 (3)", f"{row_ece(table, 'ref_abc', 10, 'focal')} (3)")
    assert by[("focal", "none")] == ("7.5 ± 3.5 (2)", "missing")
    assert by[("ce", "ref_bc")] == ("missing", "10.0 (1)")
    # a temperature that only the runs have (not configured) still gets its column
    assert list(calibration.calibration_frame(table, corrections=["ref_abc"], temperatures=[1], losses=["focal"])
                .columns) == ["loss", "correction", "T=1", "T=10"]


def row_ece(table, correction, t, loss) -> str:
    r = table[(table["correction"] == correction) & (table["temperature"] == t) & (table["loss"] == loss)].iloc[0]
    return f"{r['ece_mean']:.1f} ± {r['ece_sd']:.1f}"


def test_calibration_document_is_the_grid_with_its_title_and_units(partial):
    from heatedasc.report.context import RenderContext
    from heatedasc.report.runs import discover_runs, load_runs

    results, cfg, _ = partial
    runs = load_runs(discover_runs(results.parent / "src"))
    table = calibration.calibration_table(runs)
    doc = calibration.calibration_document(table, RenderContext(config=cfg, registry=REGISTRY, runs=runs))
    assert doc.title == "Expected calibration error (%) of softmax(z/T) on the test set"
    assert doc.frame.equals(calibration.calibration_frame(
        table, corrections=cfg["sweep"]["correction"], temperatures=cfg["sweep"]["temperature"],
        losses=cfg["sweep"]["loss"], labels={c: v["label"] for c, v in cfg["report"]["corrections"].items()}))
    assert doc.notes == (
        "ECE in %, 15 equal-width confidence bins: mean ± sd over seeds (number of seeds); \"missing\" = no run of "
        "that cell. The heated-up softmax is trained with p = softmax(z/T), so its probabilities are those at the "
        "training temperature T. Pooled-over-seeds ECE, accuracy and confidence are in the CSV.",)


def test_a_run_without_ece_in_its_metrics_gets_it_from_its_predictions(tmp_path):
    """Older metrics.json files lack `ece`: the calibration table computes it from predictions.npz (the same
    definition, heatedasc.metrics), and a run with neither counts as no value."""
    from heatedasc.metrics import expected_calibration_error
    from heatedasc.report.runs import discover_runs, load_runs

    for seed, extras in ((0, True), (1, False)):
        run = write_run(tmp_path, "ref_abc", 1, "focal", seed, acc_a=0.7, acc_b=0.6, acc_c=0.7, extras=extras)
        metrics = json.loads((run / "metrics.json").read_text())
        del metrics["ece"]
        (run / "metrics.json").write_text(json.dumps(metrics))
    table = calibration.calibration_table(load_runs(discover_runs(tmp_path)))
    with np.load(tmp_path / "runs" / "ref_abc" / "T1" / "focal" / "seed0" / "predictions.npz") as z:
        want = 100 * expected_calibration_error(z["probs"], z["labels"])
    (row,) = table.itertuples(index=False)
    assert row.n == 1 and row.ece_mean == pytest.approx(want, rel=1e-6) and row.n_pooled_runs == 1  # float32 probs


@pytest.mark.parametrize("confidence, k", [(0.95, 3), (0.9, 0)])
def test_significance_notes_state_the_level_the_family_and_the_bootstrap(confidence, k):
    method, policy, cover = significance.significance_notes(confidence, k, ["holdout"])
    level = f"{confidence * 100:g}%"
    assert f"sd/√n at {level}," in method and f"with fewer than {significance.MIN_PAIRS} pairs" in method
    assert (f"the same {significance.BOOTSTRAP_RESAMPLES} resamples, seed {significance.BOOTSTRAP_SEED}, for A, B"
            in method)
    assert f"judged at level 1 − (1 − {confidence:g})/k" in policy
    assert f"at most {1 - confidence:.2g}. The {level} verdict" in policy
    assert policy.endswith(f" Here k = {k}." if k else " Here no row has an interval (k = 0).")
    assert "train.selection test" not in cover and cover.endswith("hardware or software versions.")
    with_test = significance.significance_notes(confidence, k, ["holdout", "test"])[2]
    assert with_test.startswith(cover) and "With train.selection test, each run's epoch" in with_test
