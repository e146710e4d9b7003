"""Benchmarks: statistics (`stats`: bootstrap confidence intervals clustered by prompt, of accuracies and of paired
differences) and output (`report`: text tables, `results.json` and a self-contained `report.html`). Generic:
nothing here knows a world or a model.

Example:
    >>> from discadapt.bench import bootstrap_ci
    >>> str(bootstrap_ci([1, 0] * 5))
    '0.500 [0.200, 0.800]'
"""

from .report import ReportRow, Table, accuracy_table, atomic_write, render_html, write_report
from .stats import Interval, bootstrap_ci, paired_difference_ci

__all__ = [
    "Interval",
    "ReportRow",
    "Table",
    "accuracy_table",
    "atomic_write",
    "bootstrap_ci",
    "paired_difference_ci",
    "render_html",
    "write_report",
]
