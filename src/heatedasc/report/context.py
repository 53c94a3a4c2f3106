"""What a renderer reads (RenderContext): the leaf of the report package. The renderers (one module per
artefact: paper_tables, fig3, fig2, calibration, confusion, significance, html), the registry that lists them
and render, which runs them, all import it; it imports none of them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    import pandas as pd


class Artefacts(Protocol):
    """What a renderer may ask of the registry (heatedasc.report.registry.Registry): its artefacts in order,
    and the figures of other stages the page shows."""

    @property
    def upstream_figures(self) -> Sequence[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


@dataclass
class RenderContext:
    """What a renderer reads: the config (the artefact's part of it in a Snakemake job, all of it in
    `heatedasc report`), the registry, the runs, and the files of other stages and artefacts."""

    config: Mapping
    registry: Artefacts
    runs: pd.DataFrame | None = None
    fig2_embeddings: Mapping[float, str | None] = field(default_factory=dict)  # T -> embeddings.npz
    provenance_files: Sequence[str | os.PathLike] = ()  # every run's provenance.json (present or not)
    artefacts: Mapping[str, str] = field(default_factory=dict)  # output key -> path, for the page
    origin: str = ""  # who rendered: printed on the page

    @property
    def caveat(self) -> str:
        """`report.caveat`: one line every result table and the page print (e.g. that demo runs cannot
        test the paper's claims); empty for none."""
        return str(self.config.get("report", {}).get("caveat") or "")
