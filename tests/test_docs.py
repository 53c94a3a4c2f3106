"""The repository documents its own reproduction decisions (docs/reproduction.md): references into it name
real sections, nothing points at a spec outside the repository, and the params.yaml keys and values the
page cites are those of params.yaml / config/smoke.yaml, so the page cannot drift from the config silently."""

import re

import yaml
from conftest import REPO

DOC = REPO / "docs" / "reproduction.md"
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())

# The repository's own text: code, workflow, configuration, docs and tests.
SCANNED = ("src", "workflow", "config", "docs", "tests", "params.yaml", "README.md", "Snakefile", "dvc.yaml")
SKIPPED_DIRS = {".venv", ".git", "results", "__pycache__", ".snakemake", ".pytest_cache"}
# The worklist of replacements quotes the old references verbatim; it is deleted once they are applied.
# Pointers to the team-internal spec, spelt in pieces so that this file does not contain them itself.
FORBIDDEN = (".." + "/shared", "SPEC" + ".md", "SPEC" + " §")

SECTION_HEADING = re.compile(r"^## §(\d+) \S", re.MULTILINE)
DOC_REFERENCE = re.compile(r"docs/reproduction\.md((?:\s*,?\s*§\d+(?:\s*[-–]\s*§?\d+)?)+)")
SECTION_NUMBER = re.compile(r"§(\d+)(?:\s*[-–]\s*§?(\d+))?")
BACKTICKED = re.compile(r"`([^`\n]+)`")
DOTTED_NAME = re.compile(r"^[a-z_][a-z0-9_]*(?:\.[A-Za-z0-9_]+)+$")
# Dotted names in backticks that are files or code, not params.yaml keys.
FILE_SUFFIXES = {"csv", "html", "json", "lock", "md", "npy", "npz", "pdf", "png", "pt", "py", "smk", "txt", "yaml", "yml"}
CODE_NAMESPACES = {"heatedasc", "librosa", "np", "numpy", "scipy", "tf", "torch", "torchaudio"}
# Table columns whose backticked value must equal the configuration's (header text without backticks).
VALUE_COLUMNS = {"value": PARAMS, "params.yaml": PARAMS, "config/smoke.yaml": SMOKE}


def repository_texts():
    """(path, text) of every UTF-8 file under SCANNED, build and result folders left out."""
    for entry in SCANNED:
        root = REPO / entry
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            parts = path.relative_to(REPO).parts
            if any(p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
                continue
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary fixture


def referenced_sections(text: str) -> list[int]:
    """Section numbers named by every "docs/reproduction.md §a[-§b][, §c]" in text (ranges expanded)."""
    numbers = []
    for match in DOC_REFERENCE.finditer(text):
        for first, last in SECTION_NUMBER.findall(match.group(1)):
            numbers += range(int(first), int(last or first) + 1)
    return numbers


def lookup(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def cited_key(span: str) -> str | None:
    """The params.yaml key a backticked span names (`a.b` or `a.b: value`), or None for files and code."""
    name = span.split(":", 1)[0].strip()
    if not DOTTED_NAME.match(name):
        return None
    parts = name.split(".")
    if parts[-1] in FILE_SUFFIXES or parts[0] in CODE_NAMESPACES:
        return None
    return name


def markdown_tables(text: str):
    """Each table as (header cells, [(line number, row cells)]), backticks kept in the rows."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|(\s*-+\s*\|)+$", lines[i + 1]):
            header = [c.strip().strip("`") for c in lines[i].strip().strip("|").split("|")]
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append((j + 1, [c.strip() for c in lines[j].strip().strip("|").split("|")]))
                j += 1
            yield header, rows
            i = j
        else:
            i += 1


def test_reference_parser_expands_lists_and_ranges():
    text = "see docs/reproduction.md §1–§3, §6 and docs/reproduction.md §10; not docs/reproduction.md alone"
    assert referenced_sections(text) == [1, 2, 3, 6, 10]


def test_reproduction_doc_has_sections_1_to_10_in_order():
    assert [int(n) for n in SECTION_HEADING.findall(DOC.read_text())] == list(range(1, 11))


def test_every_reference_into_the_doc_names_an_existing_section():
    sections = {int(n) for n in SECTION_HEADING.findall(DOC.read_text())}
    dangling, n_refs = [], 0
    for path, text in repository_texts():
        for line_no, line in enumerate(text.splitlines(), 1):
            for number in referenced_sections(line):
                n_refs += 1
                if number not in sections:
                    dangling.append(f"{path.relative_to(REPO)}:{line_no}: §{number}")
    assert n_refs > 0, "no reference into docs/reproduction.md found: is the pattern still right?"
    assert not dangling, "references to sections docs/reproduction.md lacks:\n" + "\n".join(dangling)


def test_nothing_points_at_a_spec_outside_the_repository():
    hits = [
        f"{path.relative_to(REPO)}:{line_no}: {line.strip()}"
        for path, text in repository_texts()
        for line_no, line in enumerate(text.splitlines(), 1)
        if any(word in line for word in FORBIDDEN)
    ]
    assert not hits, (
        f"{len(hits)} line(s) point at a spec outside the repository (cite docs/reproduction.md §n instead):\n"
        + "\n".join(hits)
    )


def test_every_key_the_doc_cites_exists_in_the_config():
    missing, cited = [], set()
    for line_no, line in enumerate(DOC.read_text().splitlines(), 1):
        for span in BACKTICKED.findall(line):
            key = cited_key(span)
            if key is None:
                continue
            cited.add(key)
            try:
                lookup(PARAMS, key)
            except KeyError:
                try:
                    lookup(SMOKE, key)
                except KeyError:
                    missing.append(f"docs/reproduction.md:{line_no}: `{key}`")
    assert len(cited) >= 60, f"only {len(cited)} keys recognised: is the pattern still right?"
    assert not missing, "keys in neither params.yaml nor config/smoke.yaml:\n" + "\n".join(missing)


def test_table_values_equal_the_config():
    wrong, checked = [], 0
    for header, rows in markdown_tables(DOC.read_text()):
        if "key" not in header:
            continue
        value_columns = [(i, VALUE_COLUMNS[h], h) for i, h in enumerate(header) if h in VALUE_COLUMNS]
        key_column = header.index("key")
        for line_no, cells in rows:
            keys = [k for k in map(cited_key, BACKTICKED.findall(cells[key_column])) if k]
            if not keys:
                continue
            where = f"docs/reproduction.md:{line_no}"
            if len(keys) > 1:
                wrong.append(f"{where}: one key per row, got {keys}")
                continue
            for i, config, column in value_columns:
                literal = re.match(r"^`([^`]+)`", cells[i])
                if not literal:
                    wrong.append(f"{where}: `{keys[0]}` has no backticked value in column '{column}'")
                    continue
                stated = yaml.safe_load(literal.group(1))
                try:
                    actual = lookup(config, keys[0])
                except KeyError:
                    wrong.append(f"{where}: `{keys[0]}` is not in {column if column != 'value' else 'params.yaml'}")
                    continue
                checked += 1
                if stated != actual:
                    wrong.append(f"{where}: `{keys[0]}` is {actual!r} in the config, the doc says {stated!r}")
    assert checked >= 40, f"only {checked} table values checked: is the table layout still right?"
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------ the deviations table
DEVIATIONS_HEADING = "## Deviations and options at a glance"
# What the table must list, whatever else it lists: every known difference from the paper (or [2]).
DEVIATIONS_REQUIRED = ("model selection on the test set", "precision", "bf16 autocast", "compiled training step",
                       "cuDNN determinism", "plateau patience", "L2 form", "mixup partner", "mixup λ rounding",
                       "last partial batch", "focal loss under mixup", "correction estimator", "feature storage")
OVERRIDE_FILE = re.compile(r"config/[\w.-]+\.yaml")


def deviations_table():
    """(header, [(line number in docs/reproduction.md, cells)]) of the one table under DEVIATIONS_HEADING."""
    text = DOC.read_text()
    assert DEVIATIONS_HEADING in text, f"docs/reproduction.md has no '{DEVIATIONS_HEADING}'"
    before, after = text.split(DEVIATIONS_HEADING, 1)
    offset = before.count("\n")
    tables = list(markdown_tables(after.split("\n## ", 1)[0]))
    assert len(tables) == 1, "the deviations section holds one table"
    header, rows = tables[0]
    return header, [(offset + line_no, cells) for line_no, cells in rows]


def test_the_deviations_table_lists_every_difference_with_its_key_and_effect():
    header, rows = deviations_table()
    assert header == ["difference", "this project (key)", "the paper / [2]", "measured effect", "where"]
    names = [cells[0] for _, cells in rows]
    missing = [name for name in DEVIATIONS_REQUIRED if not any(name in n for n in names)]
    assert not missing, f"the deviations table lacks rows for {missing}"
    for line_no, cells in rows:
        where = f"docs/reproduction.md:{line_no} ({cells[0]})"
        keys = [k for k in map(cited_key, BACKTICKED.findall(cells[1])) if k]
        assert keys or "no key" in cells[1], f"{where}: cite the key that sets it, or say 'no key' and where the code is"
        assert cells[3].strip(), f"{where}: state the measured effect, or 'not measured'"


def test_every_key_the_deviations_table_cites_exists_with_the_value_it_states():
    """Every dotted key a row cites exists in params.yaml; a `key: value` states params.yaml's value, or the value
    that an override file named in the same row (config/*.yaml) sets for that key. Options are named without a
    colon (`train.selection` set to `holdout`), so a stated value is always one that some shipped file holds."""
    _, rows = deviations_table()
    wrong, checked = [], 0
    for line_no, cells in rows:
        row = " | ".join(cells)
        overrides = {}
        for f in sorted(set(OVERRIDE_FILE.findall(row))):
            if (REPO / f).is_file():
                overrides[f] = yaml.safe_load((REPO / f).read_text())
            else:
                wrong.append(f"docs/reproduction.md:{line_no}: names {f}, which does not exist")
        for span in BACKTICKED.findall(row):
            key = cited_key(span)
            if key is None:
                continue
            checked += 1
            try:
                values = [lookup(PARAMS, key)]
            except KeyError:
                wrong.append(f"docs/reproduction.md:{line_no}: `{key}` is not a key of params.yaml")
                continue
            for override in overrides.values():
                try:
                    values.append(lookup(override, key))
                except KeyError:
                    pass
            if ":" in span:
                stated = yaml.safe_load(span.split(":", 1)[1])
                if stated not in values:
                    wrong.append(f"docs/reproduction.md:{line_no}: `{span}`, but params.yaml"
                                 + (f" / {', '.join(overrides)}" if overrides else "") + f" hold {values}")
    assert checked >= 20, f"only {checked} keys found in the deviations table: is its layout still right?"
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------ docs and code agree
# Four statements the docs once made that the code contradicted (issue 20). Each test pins the code's behaviour
# and the sentence that now describes it, so neither can move alone.
def flat(text: str) -> str:
    """Text with every run of whitespace (line breaks of the Markdown source) as one space."""
    return " ".join(text.split())


def files_table_row(name: str) -> str:
    """The content cell of `name` in §7's table of per-run files."""
    section = DOC.read_text().split("## §7 ", 1)[1].split("\n## ", 1)[0]
    for header, rows in markdown_tables(section):
        if header[:2] == ["file", "content"]:
            return next(cells[1] for _, cells in rows if cells[0] == f"`{name}`")
    raise AssertionError("§7 has no table of the per-run files")


def test_a_gpu_without_native_bf16_stops_the_run_it_never_falls_back_to_fp16(monkeypatch):
    import pytest
    import torch

    from heatedasc.train import resolve_runtime

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    cfg = {"amp": True, "amp_dtype": "bf16", "compile": False, "compile_mode": "default", "channels_last": True}
    with pytest.raises(ValueError, match=re.escape(
            "train.amp_dtype is 'bf16' but Old GPU has no native bfloat16; set train.amp_dtype: fp16")):
        resolve_runtime(cfg, torch.device("cuda"))
    assert resolve_runtime({**cfg, "amp_dtype": "fp16"}, torch.device("cuda")).amp_dtype == torch.float16
    doc = flat(DOC.read_text())
    assert "else float16" not in doc
    assert ("a GPU without native bfloat16 stops the run with an error that names `train.amp_dtype: fp16` (float16 "
            "autocast with gradient scaling); nothing falls back silently") in doc


def test_under_autocast_mixup_rounds_lambda_to_float16_whatever_the_autocast_dtype(monkeypatch):
    import torch

    import heatedasc.train.loop as train
    from heatedasc.losses import make_loss
    from heatedasc.model import ASCNet

    seen, real = [], train.mixup_batch

    def spy(x, y, lam, partner):
        seen.append((x.dtype, lam.dtype))
        return real(x, y, lam, partner)

    monkeypatch.setattr(train, "mixup_batch", spy)
    torch.manual_seed(0)
    model = ASCNet(n_classes=3)
    x = torch.randn(4, 24, 32).half()  # cache rows are float16
    y = torch.eye(3)[[0, 1, 2, 0]]
    lam, partner = torch.tensor([0.3, 0.7, 0.123456789, 0.9]), torch.tensor([1, 0, 3, 2])
    loss_fn = make_loss("ce", temperature=1.0)
    for amp_dtype in (None, torch.bfloat16, torch.float16):  # autocast runs on CPU too, when asked directly
        train.BatchRunner(model, torch.device("cpu"), amp_dtype, False).batch_loss(x, y, lam, partner, loss_fn, 0.0)
    assert seen == [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.float16, torch.float16)]
    doc = flat(DOC.read_text())
    assert "with λ cast to float16 — whatever `train.amp_dtype` is, bf16 included — so λ is rounded to float16" in doc
    rounding = next(cells for _, cells in deviations_table()[1] if cells[0] == "mixup λ rounding under autocast")
    assert "not measured" in rounding[3]


def test_history_csv_holds_no_timings_and_provenance_json_no_host(tmp_path, monkeypatch):
    from heatedasc.fileio import SCRATCH, resumable_dir
    from heatedasc.provenance import VOLATILE_DIR, stable_record, volatile_record
    from heatedasc.train import EPOCH_SECONDS, HISTORY_COLUMNS, RESUME_DIR

    history = files_table_row("history.csv")
    named = BACKTICKED.findall(history)
    assert [n for n in named if n != EPOCH_SECONDS] == list(HISTORY_COLUMNS) and EPOCH_SECONDS in named
    assert "seconds" not in HISTORY_COLUMNS
    record = stable_record(rule="train", wildcards={"seed": 0}, params={"train": {"epochs": 1}, "execution": {"x": 1}},
                           script=None, inputs={}, outputs={}, cpu=None, data_root=None)
    assert set(record) == {"record_version", "rule", "wildcards", "params", "code", "cpu", "inputs", "outputs",
                           "packages"}
    assert "execution" not in record["params"]
    assert {"created", "git", "host", "slurm", "execution"} <= set(volatile_record())
    provenance = flat(files_table_row("provenance.json"))
    assert VOLATILE_DIR.as_posix() == "logs/provenance"
    assert "— time, host, GPU, SLURM job, git commit, the speed-only settings — is not in it but in " \
           "`logs/provenance/<the record's path>`" in provenance
    # checkpoints: in the workflow's scratch folder, never inside the tracked run folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".snakemake").mkdir()
    run = tmp_path / "results" / "runs" / "none" / "T1" / "ce" / "seed0"
    checkpoints = resumable_dir(run, RESUME_DIR)
    assert checkpoints.parent == SCRATCH.resolve() and not checkpoints.is_relative_to(run)
    doc = flat(DOC.read_text())
    assert ".resume/last.pt" not in doc and f"the workflow's scratch folder `{SCRATCH.as_posix()}/`" in doc


def test_fig3_plots_avg_bc_and_dev_a_and_the_docs_mark_that_choice_open():
    import pandas as pd

    from heatedasc.report.fig3 import fig3_data

    runs = pd.DataFrame([{"correction": "ref_abc", "temperature": 1.0, "loss": "focal", "seed": s, "acc_a": 0.7,
                          "acc_b": 0.6, "acc_c": 0.6, "avg_bc": 0.6} for s in (0, 1)])
    assert sorted(set(fig3_data(runs, loss="focal")["metric"])) == ["Avg.BC", "Dev.A"]
    section = DOC.read_text().split("## §8 ", 1)[1].split("\n## ", 1)[0]
    fig3 = next(cells for header, rows in markdown_tables(section) if header[0] == "artefact"
                for _, cells in rows if cells[0] == "Fig. 3")
    assert "(**open**); decided here: Avg.BC and Dev.A" in fig3[3]
    deviation = next(cells for _, cells in deviations_table()[1] if cells[0] == "Fig. 3's accuracy")
    assert "**open**" in deviation[2]


# ------------------------------------------------------------------ README: only what was measured
def test_the_readme_demo_numbers_are_the_committed_reference_and_claim_no_direction():
    """README's demo paragraph quotes results/metrics.json (the committed reference) with its n, and calls the
    differences unresolvable exactly when the significance rule does. A regenerated reference whose numbers
    moved fails here with the sentence to write."""
    import json

    from heatedasc.report.significance import MIN_PAIRS

    summary = json.loads((REPO / "results" / "metrics.json").read_text())
    corrections = ("ref_abc", "ref_bc", "none")
    avg = {loss: [f"{summary[c][loss]['avg_bc_T1'] * 100:.1f}" for c in corrections] for loss in ("focal", "ce")}
    n = {summary[c][loss]["n_seeds_T1"] for c in corrections for loss in ("focal", "ce")}
    assert len(n) == 1, f"the reference's cells have different numbers of seeds {n}: say so in README.md"
    n = n.pop()
    readme = flat((REPO / "README.md").read_text())
    expected = (f"In the committed reference (`results/metrics.json`, each value a mean over n = {n} seeds), Avg.BC at "
                f"T = 1 with the focal loss is {avg['focal'][0]} for Ref.ABC, {avg['focal'][1]} for Ref.BC and "
                f"{avg['focal'][2]} for NoCorrection (cross-entropy: {avg['ce'][0]}, {avg['ce'][1]} and "
                f"{avg['ce'][2]})")
    assert expected in readme, expected
    best_at_1 = all(summary[c][loss]["best_T"] == 1.0 for c in corrections for loss in ("focal", "ce"))
    assert best_at_1 == ("for every correction and loss the demo's best Avg.BC is at T = 1" in readme)
    assert (n < MIN_PAIRS) == ('reads "not resolvable (n < 3 pairs)" for the demo' in readme)
    for claim in ("Expect spectrum correction to raise", "the paper's gain from T comes after"):
        assert claim not in readme, claim  # directions and causes drawn from two seeds


def test_the_readme_says_plainly_that_no_paper_number_is_reproduced_yet():
    readme = flat((REPO / "README.md").read_text())
    assert "**Status at paper scale: no number of the paper's Table 2 or Table 3 has been reproduced yet.**" in readme
    assert "This code has not run on the real TAU data, and no paper-size run of it has run on a GPU" in readme
