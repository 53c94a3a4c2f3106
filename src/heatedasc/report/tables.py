"""A table as the report prints it: a DataFrame of cell strings with a title and notes, rendered to
Markdown by one Jinja2 template (the HTML page renders the same frame). Cell formatters shared by every
table, and the CSV reader that turns a table's data file back into values."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

# A pipe table; "|" inside a cell is escaped so the row keeps its columns.
MARKDOWN = """\
# {{ title }}
{% if caveat %}
{{ caveat }}
{% endif %}
| {{ header | map("escape_pipe") | join(" | ") }} |
|{% for _ in header %}---|{% endfor %}
{% for row in rows %}| {{ row | map("escape_pipe") | join(" | ") }} |
{% endfor %}{% for note in notes %}
{{ note }}
{% endfor %}{% for note in shared %}
{{ note }}
{% endfor %}"""


@dataclass(frozen=True)
class TableDoc:
    """`frame` holds display strings (its columns are the header); each note is a paragraph under the
    table; `caveat` (optional) is one line between the title and the table. `shared` are caveats that other
    tables carry too (the model-selection note): each Markdown file prints them after its notes, so it stands
    alone, while the HTML page prints each of them once, at the top."""

    title: str
    frame: pd.DataFrame
    notes: tuple[str, ...] = ()
    caveat: str = ""
    shared: tuple[str, ...] = ()

    def markdown(self) -> str:
        return _markdown_template().render(title=self.title, caveat=self.caveat, header=list(self.frame.columns),
                                           rows=self.frame.values.tolist(), notes=self.notes, shared=self.shared)


@functools.cache
def _markdown_template():
    import jinja2

    env = jinja2.Environment(autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["escape_pipe"] = lambda cell: str(cell).replace("|", "\\|")
    return env.from_string(MARKDOWN)


# Before pandas 3.1 the default float parser can be an ulp off what to_csv wrote (a cell at a rounding
# edge would then print differently); the round-trip parser, the only one from 3.1 on, is exact.
_PANDAS = tuple(int(p) for p in pd.__version__.split(".")[:2])
_EXACT_FLOATS = {} if _PANDAS >= (3, 1) else {"float_precision": "round_trip"}


def read_table_csv(path: str | os.PathLike, text_columns=()) -> pd.DataFrame:
    """A table's CSV as written (every float reads back bit-identical); `text_columns` stay strings
    ("0" stays "0", an empty cell is NaN)."""
    return pd.read_csv(path, dtype={c: str for c in text_columns}, **_EXACT_FLOATS)


def isnan(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v))


def text(v, blank: str = "–") -> str:
    """A text cell; empty or NaN (an empty CSV field) prints as `blank`."""
    return blank if isnan(v) or v == "" else str(v)


def format_cell(mean, sd=np.nan, n=None) -> str:
    """"mean ± sd (n)" in %; a reproduction cell without runs is "missing" (never 0); a blank quoted cell "–"."""
    if n is not None and not isnan(n) and int(n) == 0:
        return "missing"
    if isnan(mean):
        return "–"
    s = f"{mean:.1f}"
    if not isnan(sd):
        s += f" ± {sd:.1f}"
    return s + (f" ({int(n)})" if n is not None and not isnan(n) else "")


def format_plain(value) -> str:
    if isnan(value):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
    return str(value)


def format_published(v) -> str:
    """A published number as printed: 72.0 stays 72.0, 70.27 keeps its two decimals."""
    return f"{v:.1f}" if round(float(v), 1) == float(v) else f"{v:g}"


def integer_counts(df: pd.DataFrame, columns) -> pd.DataFrame:
    """Count columns as nullable integers, so the CSV says 3 (not 3.0) and an absent count is empty."""
    out = df.copy()
    for c in columns:
        out[c] = pd.array([None if isnan(v) else int(v) for v in out[c]], dtype="Int64")
    return out
