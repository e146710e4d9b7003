"""Benchmark output: text tables for the terminal, `results.json`, and a self-contained `report.html`.

Knows nothing of any world or model. Its inputs:

- `ReportRow`: one method on one category under one metric (the judge's accuracy, or a score such as CLIP score):
  the value with its confidence interval, counts, and the images to show with their captions and verdicts (passed,
  and a note saying why not; or no verdict and a note with the image's scores).
- `Table`: any other table (timings, per-split accuracy, probing results added by later work): a title, column
  names, rows of cells, a note.

`write_report(out_dir, results, rows, tables)` writes `results.json` (the `results` dict as given) and
`report.html`: per metric, a bar chart per category (inline SVG, one bar per method, whiskers at the interval's
ends; accuracies on [0, 1], scores on [0, the largest interval end]) and its table, the extra tables, and an
image grid per method and category (PNG data URIs, upscaled with nearest-neighbour so 32-pixel images stay sharp),
every caption and note escaped. No external assets: the file opens offline and can be mailed. Both files are
written atomically (`io.write_atomic`).

Example:
    >>> import numpy as np
    >>> from discadapt.bench.report import ReportRow, Table, accuracy_table, write_report
    >>> row = ReportRow("base", "single", 0.5, 0.2, 0.8, n_prompts=2, n_images=4,
    ...                 images=np.zeros((1, 32, 32, 3), np.uint8), captions=["a red circle"], passed=[False],
    ...                 notes=["found 0 red circles"])
    >>> print(accuracy_table([row]).format())
    accuracy [95% CI]
    method              single
    ------------------  --------------------
    n prompts / images  2 / 4
    base                0.500 [0.200, 0.800]
    >>> paths = write_report("/tmp/report-example", {"rows": 1}, [row])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import write_atomic

__all__ = ["ReportRow", "Table", "accuracy_table", "render_html", "write_report"]

GRID_PIXELS = 96  # side of an image in the grids
MAX_GRID_IMAGES = 40  # images shown per method and category


@dataclass(frozen=True)
class Table:
    """A table of any content, printed, stored in `results.json` and shown in `report.html`.

    Args:
        title (str): heading.
        columns (Sequence[str]): column names.
        rows (Sequence[Sequence]): rows of cells (str, int, float, bool or None), each as long as `columns`.
            Floats are shown with 3 decimals.
        note (str): a line below the table (how it was measured). Default "".

    Example:
        >>> print(Table("timing", ["method", "s / image"], [["base", 0.05]]).format())
        timing
        method  s / image
        ------  ---------
        base    0.050
    """

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence]
    note: str = ""

    def __post_init__(self):
        object.__setattr__(self, "columns", [str(c) for c in self.columns])
        object.__setattr__(self, "rows", [list(r) for r in self.rows])
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"`rows[{i}]` has {len(row)} cells and `columns` {len(self.columns)} names; pass one cell per "
                    "column."
                )

    @staticmethod
    def cell(value) -> str:
        """A cell as text: floats with 3 decimals, None as an empty cell."""
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3f}" if math.isfinite(value) else str(value)
        return str(value)

    def format(self) -> str:
        """The table as aligned plain text: title, header, rule, rows, note."""
        cells = [self.columns] + [[self.cell(v) for v in row] for row in self.rows]
        widths = [max(len(r[j]) for r in cells) for j in range(len(self.columns))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        out = [self.title, line(cells[0]), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in cells[1:]]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def to_dict(self) -> dict:
        """JSON-ready dict: title, columns, rows, note."""
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Table:
        """The table written by `to_dict`."""
        return cls(data["title"], data["columns"], data["rows"], data.get("note", ""))


@dataclass(frozen=True)
class ReportRow:
    """One method on one category under one metric: value, interval, counts, and images to show.

    Args:
        method (str): the method's name (a bar and a row of the table).
        category (str): the category's name (a chart and a column).
        accuracy (float), ci_low (float), ci_high (float): the value and its confidence interval; in [0, 1] for
            the metric "accuracy".
        n_prompts (int), n_images (int): what the value was measured on.
        images (np.ndarray | Sequence[np.ndarray]): `(N, S, S, 3)` uint8 images for the grid (any subset).
            Default none.
        captions (Sequence[str]): N captions, one per image. Default none.
        passed (Sequence[bool | None]): N verdicts, None where there is none (a suite without a judge). Default none.
        notes (Sequence[str]): N notes (why the verdict; e.g. what the referee found, or the image's scores).
            Default none.
        metric (str): what the value is: "accuracy" (a judge's) or a score's name. Default "accuracy".
    """

    method: str
    category: str
    accuracy: float
    ci_low: float
    ci_high: float
    n_prompts: int
    n_images: int
    images: np.ndarray | Sequence[np.ndarray] = field(default_factory=list)
    captions: Sequence[str] = field(default_factory=list)
    passed: Sequence[bool] = field(default_factory=list)
    notes: Sequence[str] = field(default_factory=list)
    metric: str = "accuracy"

    def __post_init__(self):
        n = len(self.images)
        for name in ("captions", "passed", "notes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"`{name}` has {len(getattr(self, name))} items and `images` {n}; pass one per image.")
        if self.metric == "accuracy" and not 0 <= self.ci_low <= self.ci_high <= 1:
            raise ValueError(f"the interval is [{self.ci_low}, {self.ci_high}]; pass 0 <= `ci_low` <= `ci_high` <= 1.")
        if not self.ci_low <= self.ci_high:
            raise ValueError(f"the interval is [{self.ci_low}, {self.ci_high}]; pass `ci_low` <= `ci_high`.")

    @property
    def label(self) -> str:
        """`acc [lo, hi]` with 3 decimals."""
        return f"{self.accuracy:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def accuracy_table(rows: Sequence[ReportRow], title: str = "accuracy [95% CI]") -> Table:
    """Method x category table of `acc [lo, hi]`, methods in order of first appearance, with a first row of
    `n prompts / images` per category (taken from the first method that has the category).

    Args:
        rows (Sequence[ReportRow]): the cells.
        title (str): heading. Default "accuracy [95% CI]".

    Returns:
        Table: columns `method` and the categories.
    """
    methods, categories = _ordered(r.method for r in rows), _ordered(r.category for r in rows)
    cell = {(r.method, r.category): r for r in rows}
    counts = ["n prompts / images"]
    for c in categories:
        first = next(r for r in rows if r.category == c)
        counts.append(f"{first.n_prompts} / {first.n_images}")
    body = [[m] + [cell[m, c].label if (m, c) in cell else "" for c in categories] for m in methods]
    return Table(title, ["method"] + categories, [counts] + body)


# ---- HTML -------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;
text-align:left}th{background:#f3f3f3}.note{color:#666;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.grid{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:GRIDpx;font-size:10px;line-height:1.2}figure img{image-rendering:pixelated;display:block}
.ok{color:#17702a}.fail{color:#b0201d}figcaption{word-wrap:break-word}
""".replace("GRID", str(GRID_PIXELS + 20))

_PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _png_uri(image: np.ndarray, pixels: int = GRID_PIXELS) -> str:
    from PIL import Image

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image has shape {array.shape} and dtype {array.dtype}; pass (S, S, 3) uint8 images.")
    scale = max(1, round(pixels / max(array.shape[:2])))
    picture = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _axis_top(rows: Sequence[ReportRow]) -> float:
    """The chart's upper end: 1 for accuracies, else the largest interval end rounded up to 1, 2 or 5 x 10^k."""
    if all(r.metric == "accuracy" for r in rows):
        return 1.0
    largest = max([r.ci_high for r in rows] + [r.accuracy for r in rows] + [1e-9])
    power = 10.0 ** math.floor(math.log10(largest))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= largest)


def _chart(category: str, rows: Sequence[ReportRow], colors: Mapping[str, str]) -> str:
    """Inline SVG bar chart of one category: a bar per method, whiskers at the interval's ends."""
    bar, gap, left, top, height = 44, 14, 34, 22, 160
    width = max(150, left + len(rows) * (bar + gap) + gap)
    scale = _axis_top(rows)
    y = lambda v: top + height * (1 - max(0.0, v) / scale)  # noqa: E731
    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 40}" role="img" '
        f'aria-label="{e(category)}">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="13" font-weight="bold">{e(category)}</text>',
    ]
    for tick in (scale * f for f in (0, 0.25, 0.5, 0.75, 1)):
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y(tick)}" y2="{y(tick)}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 4}" y="{y(tick) + 4}" text-anchor="end" font-size="10">{tick:g}</text>')
    for i, r in enumerate(rows):
        x = left + gap + i * (bar + gap)
        mid = x + bar / 2
        parts.append(
            f'<rect x="{x}" y="{y(r.accuracy):.1f}" width="{bar}" height="{top + height - y(r.accuracy):.1f}" '
            f'fill="{colors[r.method]}"><title>{e(r.method)}: {e(r.label)}</title></rect>'
        )
        lo, hi = y(r.ci_low), y(r.ci_high)
        parts.append(f'<line x1="{mid}" x2="{mid}" y1="{lo:.1f}" y2="{hi:.1f}" stroke="#222" stroke-width="1.5"/>')
        for end in (lo, hi):
            parts.append(f'<line x1="{mid - 8}" x2="{mid + 8}" y1="{end:.1f}" y2="{end:.1f}" stroke="#222"/>')
        parts.append(
            f'<text x="{mid}" y="{top + height + 14}" text-anchor="middle" font-size="10">{e(r.method[:12])}</text>'
        )
        parts.append(
            f'<text x="{mid}" y="{top + height + 28}" text-anchor="middle" font-size="10">{r.accuracy:.2f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _title(metric: str) -> str:
    return "accuracy [95% CI]" if metric == "accuracy" else f"{metric} [95% CI]"


def _html_table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{e(Table.cell(v))}</td>" for v in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{e(table.note)}</p>' if table.note else ""
    return f"<h3>{e(table.title)}</h3><table><tr>{head}</tr>{body}</table>{note}"


def _grid(row: ReportRow, max_images: int) -> str:
    e = html.escape
    figures = []
    for image, caption, ok, note in list(zip(row.images, row.captions, row.passed, row.notes))[:max_images]:
        verdict = '<span class="ok">ok</span>' if ok else f'<span class="fail">no: {e(note)}</span>'
        verdict = e(note) if ok is None else verdict
        figures.append(
            f'<figure><img src="{_png_uri(image)}" alt="{e(caption)}" width="{GRID_PIXELS}" height="{GRID_PIXELS}">'
            f"<figcaption>{e(caption)}<br>{verdict}</figcaption></figure>"
        )
    shown = min(len(row.images), max_images)
    return (
        f"<h3>{e(row.method)} / {e(row.category)}: {e(row.metric)} {e(row.label)}, {row.n_prompts} prompts, "
        f"{row.n_images} images "
        f'<span class="note">(showing {shown})</span></h3><div class="grid">{"".join(figures)}</div>'
    )


def render_html(
    rows: Sequence[ReportRow],
    tables: Sequence[Table] = (),
    title: str = "discadapt report",
    settings: Mapping | None = None,
    max_images: int = MAX_GRID_IMAGES,
) -> str:
    """The report as one self-contained HTML page (see the module docstring).

    Args:
        rows (Sequence[ReportRow]): method x category cells, >= 1.
        tables (Sequence[Table]): further tables, shown after the accuracy table. Default none.
        title (str): page title. Default "discadapt report".
        settings (Mapping | None): key -> value pairs listed under the title (seed, steps, ...). Default None.
        max_images (int): images shown per method and category, >= 0. Default `MAX_GRID_IMAGES` (40).

    Returns:
        str: the HTML text.
    """
    if not rows:
        raise ValueError("`rows` is empty; pass one ReportRow per method and category.")
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0:
        raise ValueError(f"`max_images` is {max_images!r}; pass an int >= 0.")
    e = html.escape
    methods = _ordered(r.method for r in rows)
    colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}
    legend = " ".join(f'<span style="color:{colors[m]}">&#9632;</span> {e(m)}' for m in methods)
    listed = ""
    if settings:
        items = "".join(f"<tr><th>{e(str(k))}</th><td>{e(json.dumps(v))}</td></tr>" for k, v in settings.items())
        listed = f"<h2>Settings</h2><table>{items}</table>"
    metrics = _ordered(r.metric for r in rows)
    sections = []
    for metric in metrics:
        of = [r for r in rows if r.metric == metric]
        charts = "".join(
            _chart(c, [r for r in of if r.category == c], colors) for c in _ordered(r.category for r in of)
        )
        name = "Accuracy" if metric == "accuracy" else metric
        sections.append(
            f'<h2>{e(name)} per category</h2><p class="note">Bars: {e(metric)}; whiskers: confidence interval. '
            f'{legend}</p><div class="charts">{charts}</div>{_html_table(accuracy_table(of, _title(metric)))}'
        )
    grids = "".join(_grid(r, max_images) for m in methods for r in rows if r.method == m and r.metric == metrics[0])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>"
        f"{''.join(sections)}{''.join(_html_table(t) for t in tables)}"
        f"<h2>Images</h2>{grids}{listed}</body></html>\n"
    )


def write_report(
    out_dir: str | os.PathLike,
    results: Mapping,
    rows: Sequence[ReportRow],
    tables: Sequence[Table] = (),
    title: str = "discadapt report",
    settings: Mapping | None = None,
    max_images: int = MAX_GRID_IMAGES,
) -> dict[str, Path]:
    """Write `results.json` (`results`, indented) and `report.html` (`render_html`) into `out_dir` (created),
    each atomically.

    Args:
        out_dir (str | PathLike): output folder.
        results (Mapping): JSON-serialisable results.
        rows, tables, title, settings, max_images: as in `render_html`.

    Returns:
        dict[str, Path]: `{"results": .../results.json, "report": .../report.html}`.
    """
    page = render_html(rows, tables, title, settings, max_images)  # fails on bad input before writing anything
    text = json.dumps(results, indent=1, allow_nan=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "report": out / "report.html"}
    write_atomic(paths["results"], text + "\n")
    write_atomic(paths["report"], page)
    return paths
