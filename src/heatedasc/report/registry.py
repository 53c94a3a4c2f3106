"""The report's artefacts, each declared once. Everything else is derived from this registry: the
Snakemake rules (workflow/rules/report.smk loops over it), the report paths of PATHS and the targets of
`rule all` (workflow/rules/common.smk), the sections of the HTML page and `heatedasc report`.

An artefact is one Snakemake rule (its name is the rule's and the provenance record's stage): its output
files (paths under results/, as PATHS keys), the run inputs it needs, the config it reads (passed as the
rule's params, so a change reruns it), its renderer, and the tables and figures it shows on the page.
Each artefact's renderer (and, for a table, its document) lives in a module of its own under report/, which
knows the RenderContext (heatedasc.report.context) and the shared helpers (runs, tables), never this registry
or render. Adding an artefact means adding an entry here and writing its renderer module."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping

from heatedasc.report import calibration, confusion, fig2, fig3, html, paper_tables, significance
from heatedasc.report.tables import TableDoc, read_table_csv

if TYPE_CHECKING:
    import pandas as pd

    from heatedasc.report.context import RenderContext

# What an artefact's rule can read besides its config:
NEEDS = {
    "metrics": "every run's metrics.json (the renderer gets them as ctx.runs)",
    "predictions": "every run's predictions.npz (read through ctx.runs' run folders)",
    "fig2_embeddings": "embeddings.npz of the Fig. 2 runs (ctx.fig2_embeddings: T -> file)",
    "run_provenance": "every run's provenance.json (ctx.provenance_files)",
    "report": "every other artefact's files and the figures of other stages (ctx.artefacts)",
}
WHOLE_CONFIG = "*"
FIG2_INPUT_PREFIX = "fig2_T"  # named inputs fig2_T1, fig2_T10, ...: one embeddings file per T


@dataclass(frozen=True)
class Table:
    """A table on the page and in Markdown: the artefact's CSV `csv` rendered by `document`."""

    csv: str  # output key of the data (CSV)
    markdown: str  # output key of its Markdown rendering; also the id of its section on the page
    title: str
    caption: str
    document: Callable[[pd.DataFrame, RenderContext], TableDoc]
    text_columns: tuple[str, ...] = ()  # CSV columns that are text even when they look like numbers

    def document_from(self, csv_path, ctx: RenderContext) -> TableDoc:
        return self.document(read_table_csv(csv_path, self.text_columns), ctx)


@dataclass(frozen=True)
class Figure:
    key: str  # output key of the PNG; also the id of its section on the page
    title: str
    caption: str


@dataclass(frozen=True)
class UpstreamFigure(Figure):
    """A figure another stage makes, shown on the page when it exists."""

    path: str = ""  # under results/


@dataclass(frozen=True)
class Artefact:
    name: str  # the Snakemake rule and the provenance record's stage
    outputs: Mapping[str, str]  # output key -> path under results/
    provenance: str  # the rule's provenance record, under results/
    # render(ctx, out) writes the figures and JSON of `out` and returns the tables {output key: DataFrame},
    # which render_artefact writes as CSV (and, per Table, as Markdown)
    render: Callable[[RenderContext, Mapping[str, str]], Mapping[str, pd.DataFrame] | None]
    needs: frozenset[str] = frozenset({"metrics"})
    config: tuple[str, ...] = ("report",)  # dotted config keys the rule passes as params; "*" = all of it
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()
    folders: frozenset[str] = frozenset()  # output keys that are folders (written whole, replaced at once)
    category: str = "Beyond the paper"  # where `snakemake --report` files its tables and figures

    def params(self, config: Mapping) -> dict:
        """The part of `config` this artefact reads."""
        return config_subset(config, self.config)


def config_subset(config: Mapping, keys: Iterable[str]) -> dict:
    """The nested dict holding only the dotted `keys` of `config` ("*": every section a result depends on)."""
    from heatedasc.config import NOT_RESULT_SECTIONS

    keys = list(keys)
    if WHOLE_CONFIG in keys:
        return {k: v for k, v in config.items() if k not in NOT_RESULT_SECTIONS}
    out: dict = {}
    for dotted in keys:
        node = config
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(f"config lacks the key {'.'.join(parts[: i + 1])}")
            node = node[part]
        dst = out
        for part in parts[:-1]:
            dst = dst.setdefault(part, {})
        dst[parts[-1]] = node
    return out


class Registry:
    """The artefacts in page order, and the figures of other stages the page shows."""

    def __init__(self, artefacts: Iterable[Artefact], upstream_figures: Iterable[UpstreamFigure] = ()):
        self._artefacts: dict[str, Artefact] = {}
        for a in artefacts:
            if a.name in self._artefacts:
                raise ValueError(f"report registry: two artefacts are named {a.name!r}")
            self._artefacts[a.name] = a
        self.upstream_figures = tuple(upstream_figures)
        self._check()

    def __iter__(self) -> Iterator[Artefact]:
        return iter(self._artefacts.values())

    def __len__(self) -> int:
        return len(self._artefacts)

    def __getitem__(self, name: str) -> Artefact:
        try:
            return self._artefacts[name]
        except KeyError:
            raise KeyError(f"no report artefact named {name!r} (one of {', '.join(self._artefacts)})") from None

    def with_artefact(self, artefact: Artefact) -> Registry:
        """A new registry with `artefact` added (the page, which reads every other file, still renders last)."""
        return Registry([*self, artefact], self.upstream_figures)

    def outputs(self) -> dict[str, str]:
        """Every artefact output: key -> path under results/."""
        return {k: rel for a in self for k, rel in a.outputs.items()}

    def paths(self, root: str | os.PathLike = "results") -> dict[str, str]:
        """PATHS-style entries under `root`: every output, every provenance record ("<name>_prov") and
        every figure of another stage the page shows."""
        rel = dict(self.outputs())
        rel.update({f"{a.name}_prov": a.provenance for a in self})
        rel.update({f.key: f.path for f in self.upstream_figures})
        return {k: os.path.join(str(root), p) for k, p in rel.items()}

    def shown(self) -> dict[str, tuple[str, str, str]]:
        """Output key -> (title, caption, category) of every table (its CSV) and figure a report shows: what
        `snakemake --report` includes (each artefact's `category`, or "Spectrum correction" for other stages')."""
        items: dict[str, tuple[str, str, str]] = {}
        for a in self:
            items.update({t.csv: (t.title, t.caption, a.category) for t in a.tables})
            items.update({f.key: (f.title, f.caption, a.category) for f in a.figures})
        items.update({f.key: (f.title, f.caption, "Spectrum correction") for f in self.upstream_figures})
        return items

    def target_keys(self) -> list[str]:
        """What `rule all` asks for: every output and the figures of other stages the page shows."""
        return list(self.outputs()) + [f.key for f in self.upstream_figures]

    def render_order(self) -> list[Artefact]:
        """Artefacts that read the others' files (the page) after everything else."""
        return sorted(self, key=lambda a: "report" in a.needs)

    def rule_inputs(self, artefact: Artefact, *, run_files: Callable[[str], list], fig2_embeddings: Mapping,
                    path: Callable[[str], str]) -> dict:
        """The named inputs of an artefact's Snakemake rule. `run_files(name)` lists that file of every run
        of the grid, `fig2_embeddings` maps a T path component to its embeddings file, `path` is PATHS."""
        inputs: dict = {}
        if "metrics" in artefact.needs:
            inputs["metrics"] = run_files("metrics.json")
        if "predictions" in artefact.needs:
            inputs["predictions"] = run_files("predictions.npz")
        if "fig2_embeddings" in artefact.needs:
            inputs.update({f"{FIG2_INPUT_PREFIX}{t}": f for t, f in fig2_embeddings.items()})
        if "run_provenance" in artefact.needs:
            inputs["run_provenance"] = run_files("provenance.json")
        if "report" in artefact.needs:
            inputs.update({k: path(k) for k in self.target_keys() if k not in artefact.outputs})
        return inputs

    def _check(self) -> None:
        seen_keys: dict[str, str] = {}
        seen_paths: dict[str, str] = {}
        for a in self:
            where = f"report artefact {a.name!r}"
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", a.name):
                raise ValueError(f"{where}: the name must be a Snakemake rule name")
            unknown = sorted(set(a.needs) - set(NEEDS))
            if unknown:
                raise ValueError(f"{where}: unknown need(s) {', '.join(unknown)} (one of {', '.join(NEEDS)})")
            files = {**a.outputs, f"{a.name}_prov": a.provenance}
            for key, rel in files.items():
                if key in seen_keys:
                    raise ValueError(f"{where}: output key {key!r} is also declared by {seen_keys[key]!r}")
                if os.path.isabs(rel) or ".." in rel.split("/"):
                    raise ValueError(f"{where}: {key} = {rel!r} must be a path under results/")
                if rel in seen_paths:
                    raise ValueError(f"{where}: {rel} is also written by {seen_paths[rel]!r}")
                seen_keys[key], seen_paths[rel] = a.name, a.name
            shown = [t.csv for t in a.tables] + [t.markdown for t in a.tables] + [f.key for f in a.figures]
            undeclared = [k for k in shown if k not in a.outputs] + [k for k in a.folders if k not in a.outputs]
            if undeclared:
                raise ValueError(f"{where}: shows {', '.join(undeclared)}, which are not among its outputs")
        for f in self.upstream_figures:
            if not f.path:
                raise ValueError(f"report registry: figure {f.key!r} of another stage has no path")
            if f.key in seen_keys:
                raise ValueError(f"report registry: figure {f.key!r} of another stage clashes with an output of "
                                 f"{seen_keys[f.key]!r}")


REGISTRY = Registry(
    [
        Artefact(
            name="tables",
            category="The paper's artefacts",
            outputs={"table2": "tables/table2.csv", "table2_md": "tables/table2.md",
                     "table3": "tables/table3.csv", "table3_md": "tables/table3.md", "summary": "metrics.json",
                     "dvc_metrics": "metrics"},
            provenance="tables/provenance.json",
            render=paper_tables.render_tables,
            folders=frozenset({"dvc_metrics"}),
            config=("report", "paper"),
            tables=(
                Table("table2", "table2_md", "Table 2", "T = 1: device A and Avg.BC accuracy per correction and loss.",
                      paper_tables.table2_document),
                Table("table3", "table3_md", "Table 3", "The paper's quoted systems and this reproduction's rows.",
                      paper_tables.table3_document),
            ),
        ),
        Artefact(
            name="fig3",
            category="The paper's artefacts",
            outputs={"fig3": "figures/fig3.png", "fig3_pdf": "figures/fig3.pdf", "fig3_csv": "figures/fig3.csv"},
            provenance="figures/fig3.provenance.json",
            render=fig3.render_fig3,
            config=("report", "paper"),
            figures=(Figure("fig3", "Fig. 3", "Accuracy against temperature per correction (mean ± sd over seeds)."),),
        ),
        Artefact(
            name="fig2",
            category="The paper's artefacts",
            outputs={"fig2": "figures/fig2.png"},
            provenance="figures/fig2.provenance.json",
            render=fig2.render_fig2,
            needs=frozenset({"fig2_embeddings"}),
            config=("report.fig2_temperatures",),
            figures=(Figure("fig2", "Fig. 2", "PCA of the GAP embeddings, test and train rows, per T."),),
        ),
        Artefact(
            name="calibration",
            outputs={"calibration": "tables/calibration.csv", "calibration_md": "tables/calibration.md",
                     "reliability": "figures/reliability.png"},
            provenance="tables/calibration.provenance.json",
            render=calibration.render_calibration,
            needs=frozenset({"metrics", "predictions"}),
            config=("report", "sweep"),
            tables=(Table("calibration", "calibration_md", "Calibration",
                          "Expected calibration error of softmax(z/T) per correction, T and loss.",
                          calibration.calibration_document),),
            figures=(Figure("reliability", "Reliability diagrams",
                            "softmax(z/T) on the test set, pooled over seeds."),),
        ),
        Artefact(
            name="confusion",
            outputs={"confusion": "figures/confusion.png", "confusion_csv": "tables/confusion.csv"},
            provenance="figures/confusion.provenance.json",
            render=confusion.render_confusion,
            figures=(Figure("confusion", "Confusion matrices", "Per device, summed over seeds."),),
        ),
        Artefact(
            name="significance",
            outputs={"significance": "tables/significance.csv", "significance_md": "tables/significance.md"},
            provenance="tables/significance.provenance.json",
            render=significance.render_significance,
            needs=frozenset({"metrics", "predictions"}),  # the test-set sampling bootstrap reads each run's clips
            tables=(Table("significance", "significance_md", "Significance",
                          "The paper's comparisons, paired over seeds, with the test set's sampling error.",
                          significance.significance_document,
                          text_columns=significance.SIGNIFICANCE_TEXT),),
        ),
        # One self-contained HTML page: every table and figure above, the selection note, the effective
        # configuration and the lineage of the training runs.
        Artefact(
            name="report_html",
            outputs={"report_html": "report.html"},
            provenance="report.provenance.json",
            render=html.render_page,
            needs=frozenset({"metrics", "run_provenance", "report"}),
            config=(WHOLE_CONFIG,),
        ),
    ],
    upstream_figures=[
        UpstreamFigure("coefficient_plot", "Spectrum-correction coefficients", "c_d(f) in dB per device and reference.",
                       path="coefficients/coefficients.png"),
    ],
)
