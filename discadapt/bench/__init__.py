"""The one evaluation runner: a suite's prompts and seeds x methods -> judged and scored images, statistics, tables,
a report; and `discadapt bench` (`commands.py`).

- `suite.py`: `Prompt`, `Suite` (prompts with category / split / group, images per prompt, seeds, a judge, metrics);
  `suites.py`: suites from prompt-list files and COCO captions.
- `methods.py`: `Method` (`(prompts, seeds) -> (N, S, S, 3)` uint8), `pipeline_method` (a diffusers pipeline with one
  seeded generator per image, the seeds of `discadapt generate`).
- `runner.py`: `run_suite`: batches interleaved across methods, resumable, sharded over processes, intervals and
  paired differences to the first method, timing ratios, tables, results.json and report.html; `store.py`: its
  manifest and batch files; `tables.py`: its tables and report rows.
- `metric_specs.py`: the `--metric` names; `compare.py`: `bench compare`; `discriminate.py`: ITM / REC suites;
  `fid_table.py`: FID against real images.
- `stats.py`: bootstrap confidence intervals clustered by prompt, of accuracies and of paired differences.
- `report.py`: text tables, `results.json` and a self-contained `report.html`.

Generic: nothing here knows a world or a model; a world supplies suites and judges (`plugins`).

Example:
    >>> from discadapt.bench import bootstrap_ci
    >>> str(bootstrap_ci([1, 0] * 5))
    '0.500 [0.200, 0.800]'
"""

from .methods import Method, check_images, pipeline_method
from .report import ReportRow, Table, accuracy_table, render_html, write_report
from .runner import BATCH_SIZE, GRID_IMAGES, run_suite, versions
from .stats import Interval, bootstrap_ci, paired_difference_ci
from .suite import Prompt, Suite

__all__ = [
    "BATCH_SIZE",
    "GRID_IMAGES",
    "Interval",
    "Method",
    "Prompt",
    "ReportRow",
    "Suite",
    "Table",
    "accuracy_table",
    "bootstrap_ci",
    "check_images",
    "paired_difference_ci",
    "pipeline_method",
    "render_html",
    "run_suite",
    "versions",
    "write_report",
]
