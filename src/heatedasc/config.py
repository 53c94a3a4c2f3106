"""Cross-key checks of a merged configuration that its JSON schema cannot express.

The schema (workflow/schemas/config.schema.yaml) checks each key's type and range; these checks tie
keys to each other, so that a grid naming an unknown correction stops at planning time with the key's
name instead of as a missing input file deep in the DAG.
"""

from __future__ import annotations

from typing import Mapping


def check_consistency(config: Mapping) -> None:
    """Raise ValueError naming the key when the grid or the report refer to something not configured."""
    references = config["correction"]["references"]
    known = sorted(references)
    devices = list(config["data"]["devices"])
    for name, refs in references.items():
        unknown = [d for d in refs if d not in devices]
        if unknown:
            raise ValueError(f"correction.references.{name}: device(s) {unknown} are not in data.devices {devices}")

    def check(key: str, correction: str) -> None:
        if correction not in references:
            raise ValueError(f"{key}: correction '{correction}' is not a key of correction.references {known}")

    for c in config["sweep"]["correction"]:
        check("sweep.correction", c)
    report = config["report"]
    check("report.fig2_correction", report["fig2_correction"])
    for i, row in enumerate(report["table3_rows"]):
        check(f"report.table3_rows[{i}] ({row['name']})", row["correction"])
    for i, row in enumerate(report["confusion_runs"]):
        check(f"report.confusion_runs[{i}] ({row['name']})", row["correction"])
    for i, comp in enumerate(report["comparisons"]):
        for side in ("a", "b"):
            check(f"report.comparisons[{i}].{side} ({comp['name']})", comp[side]["correction"])
