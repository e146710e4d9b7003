"""The runner's tables and report rows, from results.json's "methods": accuracy per split, paired differences to the
first method (the judge's accuracy or a metric's mean), marginal verdicts, time per image, and a `ReportRow` per
method, category and metric.
"""

from __future__ import annotations

import numpy as np

from .report import ReportRow, Table
from .suite import Suite

__all__ = ["report_rows", "result_tables", "value_of"]


def value_of(stats: dict) -> float:
    """The estimate of a stats dict: an accuracy, or a metric's mean."""
    return stats["accuracy"] if "accuracy" in stats else stats["mean"]


def _cell(stats: dict | None) -> str:
    return "" if stats is None else f"{value_of(stats):.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def _split_table(per_method: dict, suite: Suite) -> Table:
    """Method x split rows (each split, then all prompts) of `acc [lo, hi]` per category, per pool and over all
    categories."""
    body, categories = [], suite.categories
    cells = lambda found: [  # noqa: E731
        *[_cell(found["categories"].get(c)) for c in categories],
        *[_cell(found.get("pools", {}).get(p)) for p in suite.pools],
    ]
    for name, m in per_method.items():
        for split in suite.splits:
            found = m["splits"][split]
            body.append([name, split, *cells(found), _cell(found["all"])])
        body.append([name, "all", *cells(m), _cell(m["overall"])])
    columns = ["method", "split", *categories, *suite.pools, "all"]
    return Table("accuracy per split [95% CI over prompts]", columns, body)


def _difference_table(per_method: dict, suite: Suite, metric: str | None = None) -> Table:
    """Each method's difference to the first, per category and pool: the judge's accuracy, or `metric`'s mean."""
    base = next(iter(per_method))
    of = lambda m: m if metric is None else m["metrics"][metric]  # noqa: E731
    cell = lambda d: f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"  # noqa: E731
    rows = [
        [
            name,
            *[cell(of(m)["difference_to_base"][c]) for c in [*suite.categories, *suite.pools, "all"]],
        ]
        for name, m in per_method.items()
        if "difference_to_base" in of(m)
    ]
    what = "accuracy" if metric is None else metric
    return Table(
        f"difference to {base}{'' if metric is None else f' in {metric}'} [95% CI, paired: same prompts and seeds]",
        ["method", *suite.categories, *suite.pools, "all"],
        rows,
        note=f"{what} minus the {base} row's, image by image (same prompt, same seed); prompts resampled",
    )


def _marginal_table(per_method: dict, suite: Suite) -> Table:
    fraction = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    return Table(
        "marginal verdicts (fraction of images)",
        ["method", *suite.categories, "all"],
        [[name, *[fraction(m["marginal"][c]) for c in [*suite.categories, "all"]]] for name, m in per_method.items()],
        note=getattr(suite.judge, "marginal_note", None)
        or f"verdicts that one reading near the {suite.judge.name}'s cut-offs would flip; a difference between rows "
        "smaller than these fractions could come from the judge",
    )


def _scoring(suite: Suite) -> str:
    """What scores the images, for notes: "oracle", "metrics", "oracle or the metrics"."""
    judge = None if suite.judge is None else suite.judge.name
    return " or the ".join(name for name in (judge, "metrics" if suite.metrics else None) if name)


def _timing_table(per_method: dict, suite: Suite) -> Table:
    base, n_images = next(iter(per_method)), len(suite.jobs())
    return Table(
        "time per image",
        ["method", "images", "seconds", "s / image", f"ratio to {base}"],
        [[name, n_images, m["seconds"], m["seconds_per_image"], m["time_ratio"]] for name, m in per_method.items()],
        note=f"wall time of the method's calls (generation only, not the {_scoring(suite)}), batches interleaved "
        "across methods",
    )


def _scores_note(record: dict) -> str:
    """An image's scores for its grid caption: "CLIP score 31.200; BLIP-VQA 0.412"."""
    return "; ".join(f"{k} {v:.3f}" for k, v in record.get("scores", {}).items())


def report_rows(suite: Suite, per_method: dict, images: dict, verdicts: dict, grid_images: int) -> list[ReportRow]:
    """A `ReportRow` per method, category and metric (the judge's accuracy first); the first metric's rows show the
    first image of each prompt (at most `grid_images`) with its verdict, or with its scores when there is no judge."""
    jobs, rows = suite.jobs(), []
    cats = np.array([suite.prompts[i].category for i, _ in jobs])
    first = np.array([k == 0 for _, k in jobs])
    metrics = ([None] if suite.judge is not None else []) + [m.name for m in suite.metrics]
    for name, stacked in images.items():
        records = per_method[name]["images"]
        for c in suite.categories:
            shown = np.flatnonzero(first & (cats == c))[:grid_images]
            for metric in metrics:
                found = per_method[name] if metric is None else per_method[name]["metrics"][metric]
                stats, with_images = found["categories"][c], metric == metrics[0]
                shown_here = shown if with_images else shown[:0]
                rows.append(
                    ReportRow(
                        name,
                        c,
                        value_of(stats),
                        stats["ci_low"],
                        stats["ci_high"],
                        stats["n_prompts"],
                        stats["n_images"],
                        images=stacked[shown_here],
                        captions=[
                            f"{suite.prompts[jobs[j][0]].text} ({suite.prompts[jobs[j][0]].split})" for j in shown_here
                        ],
                        passed=[verdicts[name][j].ok if suite.judge is not None else None for j in shown_here],
                        notes=[
                            verdicts[name][j].reason if suite.judge is not None else _scores_note(records[j])
                            for j in shown_here
                        ],
                        metric="accuracy" if metric is None else metric,
                    )  # fmt: skip
                )
    return rows


def result_tables(per_method: dict, suite: Suite, n_methods: int) -> list[Table]:
    """The judge's per-split, difference and marginal tables, each metric's difference table, the timing table."""
    shown = []
    if suite.judge is not None:
        shown += [_split_table(per_method, suite)]
        shown += [_difference_table(per_method, suite)] if n_methods > 1 else []
        shown += [_marginal_table(per_method, suite)]
    shown += [_difference_table(per_method, suite, m.name) for m in suite.metrics] if n_methods > 1 else []
    return shown + [_timing_table(per_method, suite)]
