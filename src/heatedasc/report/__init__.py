"""The report: Tables 2 and 3, Figs. 3 and 2, calibration, confusion, paired significance and one HTML
page, from the per-run outputs. Every artefact is declared once in `registry.REGISTRY` and rendered by a
module of its own (paper_tables, fig3, fig2, calibration, confusion, significance, html)."""

from heatedasc.report.context import RenderContext
from heatedasc.report.registry import REGISTRY, Artefact, Figure, Registry, Table, UpstreamFigure
from heatedasc.report.render import render_all, render_artefact, render_job
from heatedasc.report.tables import TableDoc

__all__ = ["REGISTRY", "Artefact", "Figure", "Registry", "RenderContext", "Table", "TableDoc", "UpstreamFigure",
           "render_all", "render_artefact", "render_job"]
