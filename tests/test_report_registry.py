"""The report registry is the one place an artefact is declared: a toy artefact added to a temporary
registry is rendered by render_all, shown on the HTML page, planned by Snakemake as a rule that `all`
asks for, and lands inside the DVC report stage's outputs, with no other file edited."""

import base64
import html
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, venv_env
from test_report import base_config, write_run
from test_workflow import empty_tau_root, job_counts

from heatedasc.plotting import pyplot, save_figure
from heatedasc.report import REGISTRY, Artefact, Figure, Registry, Table, TableDoc, render_all, render_job
from heatedasc.report.registry import config_subset

# The toy: a table (CSV + Markdown) and a figure, declared in one place.
TOY_DECLARATION = """
Artefact(
    name="toy",
    outputs={"toy": "tables/toy.csv", "toy_md": "tables/toy.md", "toy_png": "figures/toy.png"},
    provenance="tables/toy.provenance.json",
    render=render_toy,
    tables=(Table("toy", "toy_md", "Toy table", "Runs per correction.", toy_document),),
    figures=(Figure("toy_png", "Toy figure", "One bar per correction."),),
)"""


def render_toy(ctx, out):
    counts = ctx.runs.groupby("correction").size()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(list(counts.index), list(counts.values))
    save_figure(fig, out["toy_png"], dpi=50)
    plt.close(fig)
    return {"toy": pd.DataFrame({"correction": counts.index, "runs": counts.values})}


def toy_document(data, ctx):
    frame = pd.DataFrame({"correction": data["correction"], "runs": [f"{n} run(s)" for n in data["runs"]]})
    return TableDoc("Toy: runs per correction", frame, ("Counted from metrics.json.",), caveat=ctx.caveat)


# the same text the Snakemake subprocess below evaluates
TOY = eval(TOY_DECLARATION, {"Artefact": Artefact, "Table": Table, "Figure": Figure, "render_toy": render_toy,
                             "toy_document": toy_document})


@pytest.fixture(scope="module")
def small_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("reg") / "results"
    for c, accs in {"ref_abc": [(0.7, 0.6, 0.7), (0.72, 0.64, 0.72), (0.74, 0.62, 0.74)],
                    "none": [(0.7, 0.5, 0.52), (0.72, 0.54, 0.56), (0.71, 0.52, 0.5)]}.items():
        for seed, (a, b, cc) in enumerate(accs):
            write_run(results, c, 1, "focal", seed, acc_a=a, acc_b=b, acc_c=cc)
    return results


def test_a_toy_artefact_in_a_temporary_registry_is_rendered_and_shown_on_the_page(small_results, tmp_path):
    registry = REGISTRY.with_artefact(TOY)
    assert [a.name for a in registry.render_order()][-1] == "report_html"  # the page still renders last
    src, results = tmp_path / "src", tmp_path / "results"  # the runs, and the report rendered from them
    src.mkdir()
    (src / "runs").symlink_to(small_results / "runs")
    out = render_all(src, base_config(), results, registry=registry)
    assert out["toy"] == str(results / "tables" / "toy.csv") and out["toy_png"] == str(results / "figures" / "toy.png")
    assert pd.read_csv(out["toy"]).to_dict("list") == {"correction": ["none", "ref_abc"], "runs": [3, 3]}
    assert (results / "tables" / "toy.md").read_text() == (
        "# Toy: runs per correction\n\n| correction | runs |\n|---|---|\n| none | 3 run(s) |\n| ref_abc | 3 run(s) |\n"
        "\nCounted from metrics.json.\n")
    page = Path(out["report_html"]).read_text()
    section = page.split('<section id="toy_md">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Toy table</h2><p><em>Runs per correction.</em></p>" in section
    assert "<td>ref_abc</td><td>3 run(s)</td>" in section
    png = base64.b64encode(Path(out["toy_png"]).read_bytes()).decode()
    figure = page.split('<section id="toy_png">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Toy figure</h2>" in figure and png in figure
    assert '<a href="tables/toy.csv">toy.csv</a> (toy)' in page
    # the default registry knows nothing of it
    assert "toy" not in REGISTRY.outputs() and not any(a.name == "toy" for a in REGISTRY)


def test_snakemake_plans_the_toy_artefact_and_rule_all_asks_for_it(tmp_path):
    root = empty_tau_root(tmp_path / "tau")
    override = tmp_path / "o.yaml"
    override.write_text(yaml.safe_dump({"data": {"root": str(root)}, "sweep": {
        "correction": ["ref_abc"], "temperature": [1], "loss": ["focal"], "seed": [0]}}))
    # Snakemake in a fresh interpreter whose registry has the toy added: nothing else changes.
    program = "\n".join([
        "import sys",
        "import heatedasc.report.registry as registry",
        "from heatedasc.report.registry import Artefact, Figure, Table",
        "render_toy = toy_document = print",
        f"registry.REGISTRY = registry.REGISTRY.with_artefact({TOY_DECLARATION})",
        "from snakemake.cli import main",
        "main(sys.argv[1:])",
    ])
    cmd = [sys.executable, "-c", program, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "-n", "--configfile", str(REPO / "params.yaml"), str(override)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert job_counts(out)["toy"] == 1
    rule = out.split("rule toy:", 1)[1].split("\n\n", 1)[0]
    assert ("output: results/tables/toy.csv, results/tables/toy.md, results/figures/toy.png, "
            "results/tables/toy.provenance.json") in rule
    assert "log: logs/toy/toy.log" in rule and "benchmark: logs/benchmarks/toy/toy.tsv" in rule
    all_inputs = out.split("rule all:", 1)[1].split("input: ", 1)[1].splitlines()[0].split(", ")
    assert {"results/tables/toy.csv", "results/tables/toy.md", "results/figures/toy.png"} <= set(all_inputs)
    html_inputs = out.split("rule report_html:", 1)[1].split("\n\n", 1)[0]
    assert "results/tables/toy.csv" in html_inputs  # the page waits for it


def test_each_artefact_is_rendered_by_a_module_of_its_own():
    """One renderer module per artefact: an artefact's renderer and its tables' documents sit in one module of
    heatedasc.report that holds no other artefact's, and none of them in the shared layers (the context, the
    registry, rendering, the runs, the table documents)."""
    shared = {f"heatedasc.report.{m}" for m in ("context", "registry", "render", "runs", "tables")}
    owner: dict[str, str] = {}
    for artefact in REGISTRY:
        modules = {f.__module__ for f in (artefact.render, *(t.document for t in artefact.tables))}
        assert len(modules) == 1, (artefact.name, sorted(modules))
        module = modules.pop()
        assert module.startswith("heatedasc.report.") and module not in shared, (artefact.name, module)
        assert module not in owner, f"{artefact.name} and {owner.get(module)} are both rendered by {module}"
        owner[module] = artefact.name


def test_the_snakemake_targets_are_the_registry_s(tmp_path):
    assert REGISTRY.target_keys()[-1] == "coefficient_plot"
    assert [p for k, p in REGISTRY.paths("results").items() if k in REGISTRY.target_keys()] == [
        "results/tables/table2.csv", "results/tables/table2.md", "results/tables/table3.csv",
        "results/tables/table3.md", "results/metrics.json", "results/metrics", "results/figures/fig3.png",
        "results/figures/fig3.pdf",
        "results/figures/fig3.csv", "results/figures/fig2.png", "results/tables/calibration.csv",
        "results/tables/calibration.md", "results/figures/reliability.png", "results/figures/confusion.png",
        "results/tables/confusion.csv", "results/tables/significance.csv", "results/tables/significance.md",
        "results/report.html", "results/coefficients/coefficients.png"]


def _stage_outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o
            for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])]


@pytest.mark.parametrize("registry", [REGISTRY, REGISTRY.with_artefact(TOY)], ids=["registry", "with toy"])
def test_every_report_file_lies_inside_the_dvc_report_stage_outputs(registry):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = _stage_outs(stages["report"])
    upstream = {f.key for f in registry.upstream_figures}
    for key, p in registry.paths("results").items():
        owner = _stage_outs(stages["data"]) if key in upstream else outs
        assert any(p == o or p.startswith(o + "/") for o in owner), (key, p)


def test_no_two_dvc_outputs_overlap():
    # DVC refuses a stage output inside another one (OverlappingOutputPathsError), within a stage too
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = [o for s in stages.values() for o in _stage_outs(s)]
    assert len(outs) == len(set(outs))
    for a in outs:
        for b in outs:
            assert a == b or not b.startswith(a + "/"), (a, b)


def test_the_snakemake_job_path_writes_what_render_all_writes(small_results, tmp_path):
    """Each artefact rendered as its Snakemake job would (inputs named by Registry.rule_inputs, params from
    Artefact.params) gives the files `heatedasc report` gives."""
    src, results = tmp_path / "src", tmp_path / "results"  # the runs, and the report rendered from them
    src.mkdir()
    (src / "runs").symlink_to(small_results / "runs")
    config = base_config()
    everything = render_all(src, config, results)
    run_dirs = sorted(p.parent for p in (src / "runs").glob("*/T*/*/seed*/metrics.json"))
    fig2 = {"1": str(src / "runs" / "ref_abc" / "T1" / "focal" / "seed0" / "embeddings.npz")}
    job = tmp_path / "job"
    for artefact in REGISTRY:
        inputs = REGISTRY.rule_inputs(artefact, run_files=lambda name: [str(d / name) for d in run_dirs],
                                      fig2_embeddings=fig2, path=lambda key: everything.get(key, str(job / "absent")))
        outputs = {k: str(job / artefact.name / Path(p).name) for k, p in artefact.outputs.items()}
        render_job(artefact.name, inputs=inputs, outputs=outputs, config=artefact.params(config), origin="test")
        for key, p in outputs.items():
            if key in artefact.folders:
                assert {f.name: f.read_bytes() for f in Path(p).iterdir()} == \
                    {f.name: f.read_bytes() for f in Path(everything[key]).iterdir()}, (artefact.name, key)
                continue
            ours, theirs = Path(p).read_bytes(), Path(everything[key]).read_bytes()
            if p.endswith(".html"):  # the origin line differs; so do the links' base folders
                strip = lambda b: re.sub(rb'<p>Made by .*?</p>|href="[^"]*"', b"", b)  # noqa: E731
                ours, theirs = strip(ours), strip(theirs)
            assert ours == theirs, (artefact.name, key)  # PDFs too: no creation date in them


def md_cells(text: str) -> list[list[str]]:
    rows = [l for l in text.splitlines() if l.startswith("|") and not re.fullmatch(r"\|(-+\|)+", l)]
    return [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]


def html_cells(section: str) -> list[list[str]]:
    table = section.split("<table>", 1)[1].split("</table>", 1)[0]
    return [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table)]


def test_every_table_on_the_page_has_the_cells_of_its_markdown_file(small_results, tmp_path):
    src, results = tmp_path / "src", tmp_path / "results"  # the runs, and the report rendered from them
    src.mkdir()
    (src / "runs").symlink_to(small_results / "runs")
    config = base_config()
    config["report"]["comparisons"][0]["name"] = "a | b"  # a pipe in a cell stays one cell in both
    out = render_all(src, config, results)
    page = Path(out["report_html"]).read_text()
    tables = [t for a in REGISTRY for t in a.tables]
    assert [t.markdown for t in tables] == ["table2_md", "table3_md", "calibration_md", "significance_md"]
    for t in tables:
        section = page.split(f'<section id="{t.markdown}">', 1)[1].split("</section>", 1)[0]
        md = md_cells(Path(out[t.markdown]).read_text())
        assert html_cells(section) == md and len(md) > 1, t.markdown
    assert md_cells(Path(out["significance_md"]).read_text())[1][0] == "a | b"


def test_a_configured_caveat_is_printed_once_on_the_page_and_on_the_result_tables(small_results, tmp_path):
    src, results = tmp_path / "src", tmp_path / "results"  # the runs, and the report rendered from them
    src.mkdir()
    (src / "runs").symlink_to(small_results / "runs")
    config = base_config()
    caveat = "Demo runs: too short to test the claims of the paper."
    config["report"]["caveat"] = caveat
    out = render_all(src, config, results)
    for key in ("table2_md", "table3_md", "significance_md"):
        assert Path(out[key]).read_text().splitlines()[2] == caveat, key
    assert caveat not in Path(out["calibration_md"]).read_text()
    page = Path(out["report_html"]).read_text()
    assert page.split('<section id="config">')[0].count(caveat) == 1  # once, besides the config dump
    assert '<section id="caveat"><div class="warn"><p>' in page
    config["report"]["caveat"] = ""
    out = render_all(src, config, results)
    assert Path(out["table2_md"]).read_text().splitlines()[2].startswith("| correction |")
    assert '<section id="caveat">' not in Path(out["report_html"]).read_text()


def test_each_caveat_is_on_the_page_once_and_in_every_markdown_file_that_needs_it(small_results, tmp_path):
    """The selection note closes Tables 2 and 3 and the significance table (each file stands alone), but the page
    shows it once, in its model-selection section; the significance table's method, multiple-comparison policy and
    limits are on the page once, in that table's section."""
    import markupsafe

    from heatedasc.report import significance
    from heatedasc.report.runs import discover_runs, load_runs, selection_note

    src, results = tmp_path / "src", tmp_path / "results"
    src.mkdir()
    (src / "runs").symlink_to(small_results / "runs")
    config = base_config()
    config["report"]["caveat"] = "Demo runs: too short to test the claims of the paper."
    out = render_all(src, config, results)
    note = selection_note(load_runs(discover_runs(src)))
    for key in ("table2_md", "table3_md", "significance_md"):
        assert Path(out[key]).read_text().count(note) == 1, key
    page = Path(out["report_html"]).read_text().split('<section id="config">')[0]  # the config dump aside
    assert page.count(str(markupsafe.escape(note))) == 1
    assert page.split('<section id="selection">', 1)[1].split("</section>", 1)[0].count(str(markupsafe.escape(note))) == 1
    k = int(pd.read_csv(out["significance"])["family_k"].iloc[0])
    for paragraph in significance.significance_notes(float(config["report"]["confidence"]), k, ["test"]) + (
            config["report"]["caveat"],):
        assert page.count(str(markupsafe.escape(paragraph))) == 1, paragraph[:60]


def test_smoke_config_carries_the_demo_caveat_and_params_none():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    assert params["report"]["caveat"] == ""
    assert "cannot test the paper's claims" in smoke["report"]["caveat"]


def _artefact(**kw):
    base = dict(name="x", outputs={"x": "tables/x.csv"}, provenance="tables/x.provenance.json", render=print)
    return Artefact(**{**base, **kw})


@pytest.mark.parametrize("artefacts, message", [
    ([_artefact(), _artefact()], "report registry: two artefacts are named 'x'"),
    ([_artefact(), _artefact(name="y", outputs={"x": "tables/y.csv"}, provenance="y.json")],
     "report artefact 'y': output key 'x' is also declared by 'x'"),
    ([_artefact(), _artefact(name="y", outputs={"y": "tables/x.csv"}, provenance="y.json")],
     "report artefact 'y': tables/x.csv is also written by 'x'"),
    ([_artefact(needs=frozenset({"metrics", "weights"}))], "report artefact 'x': unknown need(s) weights"),
    ([_artefact(figures=(Figure("x_png", "X", "x"),))], "report artefact 'x': shows x_png, which are not among"),
    ([_artefact(outputs={"x": "../x.csv"})], "report artefact 'x': x = '../x.csv' must be a path under results/"),
    ([_artefact(name="x-y")], "report artefact 'x-y': the name must be a Snakemake rule name"),
])
def test_a_bad_registry_entry_is_refused_naming_it(artefacts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Registry(artefacts)


def test_a_figure_of_another_stage_needs_a_path_and_its_own_key():
    from heatedasc.report import UpstreamFigure

    with pytest.raises(ValueError, match="report registry: figure 'plot' of another stage has no path"):
        Registry([_artefact()], [UpstreamFigure("plot", "Plot", "caption")])
    with pytest.raises(ValueError, match="report registry: figure 'x' of another stage clashes with an output of 'x'"):
        Registry([_artefact()], [UpstreamFigure("x", "X", "caption", path="other/x.png")])


def test_an_artefact_s_params_hold_only_the_config_it_reads():
    config = base_config()
    assert REGISTRY["fig2"].params(config) == {"report": {"fig2_temperatures": [1, 10]}}
    assert set(REGISTRY["calibration"].params(config)) == {"report", "sweep"}
    from heatedasc.config import NOT_RESULT_SECTIONS

    # the page's params: every section a result depends on (speed-only settings, resources, pipeline left out)
    assert REGISTRY["report_html"].params(config) == {k: v for k, v in config.items() if k not in NOT_RESULT_SECTIONS}
    assert "execution" in config and "execution" not in REGISTRY["report_html"].params(config)
    with pytest.raises(ValueError, match="config lacks the key report.fig2_temps"):
        config_subset(config, ["report.fig2_temps"])


def test_a_renderer_that_returns_an_undeclared_table_is_an_error(small_results, tmp_path):
    bad = _artefact(name="bad", outputs={"bad": "tables/bad.csv"}, provenance="tables/bad.prov.json",
                    render=lambda ctx, out: {"other": pd.DataFrame()})
    metrics = sorted(str(p) for p in (small_results / "runs").glob("*/T*/*/seed*/metrics.json"))
    with pytest.raises(ValueError, match="bad: the renderer returned table 'other', which the registry does not"):
        render_job("bad", inputs={"metrics": metrics}, outputs={"bad": str(tmp_path / "bad.csv")}, config={},
                   origin="test", registry=REGISTRY.with_artefact(bad))
    silent = _artefact(name="silent", outputs={"silent": "tables/silent.csv"}, provenance="tables/s.json",
                       render=lambda ctx, out: None)
    with pytest.raises(ValueError, match="silent: the renderer did not write .*silent.csv"):
        render_job("silent", inputs={"metrics": metrics}, outputs={"silent": str(tmp_path / "silent.csv")},
                   config={}, origin="test", registry=REGISTRY.with_artefact(silent))
