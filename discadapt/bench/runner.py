"""The evaluation runner: methods x a suite's prompts and seeds -> judged images, intervals, tables, a report.

`run_suite(suite, methods, out_dir)`:

1. Check: the suite (`bench.Suite`), the methods (name -> `(prompts, seeds) -> (N, S, S, 3)` uint8, the first is
   the baseline every other is compared with), the tables; nothing is written before these checks pass.
2. Manifest: `out_dir/manifest.json` records the run's configuration (the suite's prompts, seeds, judge and
   metrics, the methods' names, the batch size and the caller's `settings`). A rerun with the same configuration
   continues where the last one stopped (killed or failed); a rerun with another configuration is refused, unless
   `resume=False` discards the earlier run.
3. Images, batches interleaved: every method runs batch b before any method runs batch b + 1, so the methods share
   the machine's load and their wall-time ratios are fair. Each batch's images, the judge's verdicts, the metrics'
   scores and the method's wall time are written to `out_dir/batches/<method>/<batch>.npz` (atomically) as soon as
   they are done: a batch whose file exists is finished, and is never drawn again. With `shard=(index, number)`
   (e.g. under `accelerate launch`) each process draws batches b with b % number == index into the same folder, and
   the first process merges them: the merged results equal a one-process run's.
4. Statistics (`bench.stats`), from per-image outcomes kept in a `metrics.JudgeAccuracy` and per-image scores kept in
   a `metrics.ItemScore` per metric and method: accuracy and mean scores per category, per split and over all, with
   95% percentile-bootstrap intervals that resample prompts; every other method's difference to the baseline,
   paired image by image (same prompt, same seed); the fraction of marginal verdicts; wall time per image and its
   ratio to the baseline's.
5. Output: the tables printed (accuracy and each metric per category, accuracy per split, differences to the
   baseline, marginal verdicts, time, then the caller's `tables`), `results.json` and a self-contained `report.html`
   (`bench.write_report`).

Example:
    >>> from discadapt.bench import Prompt, Suite, pipeline_method, run_suite
    >>> suite = Suite("mine", [Prompt("a red circle", "single")], judge, images_per_prompt=4)  # doctest: +SKIP
    >>> results = run_suite(suite, {"base": pipeline_method(pipe)}, "bench-out")  # doctest: +SKIP
    >>> results["methods"]["base"]["overall"]["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import clean_temporary, write_atomic
from ..metrics import ItemScore, JudgeAccuracy
from .methods import Method, check_images
from .report import ReportRow, Table, accuracy_table, write_report
from .stats import bootstrap_ci, paired_difference_ci
from .suite import Suite

__all__ = ["BATCH_SIZE", "CI", "GRID_IMAGES", "run_suite", "versions"]

BATCH_SIZE = 50  # images per method call
GRID_IMAGES = 40  # images shown per method and category in report.html (the first image of each prompt)
CI = "95% percentile bootstrap over prompts"
MANIFEST = "manifest.json"


def versions() -> dict[str, str]:
    """Versions of discadapt and the libraries that shape its images and statistics."""
    import diffusers
    import scipy
    import torch

    from .. import __version__

    return {
        "discadapt": __version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


# ---- 1. checks ------------------------------------------------------------------------------------------------------


def _check_methods(methods) -> dict[str, Method]:
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError(f"`methods` is {methods!r}; pass a non-empty dict of name -> function (prompts, seeds).")
    for name, fn in methods.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"`methods` has a method named {name!r}; pass non-empty string names.")
        if not callable(fn):
            raise ValueError(f"`methods[{name!r}]` is {fn!r}; pass a function (prompts, seeds) -> uint8 images.")
    return dict(methods)


def _check_tables(tables) -> list:
    tables = list(tables)
    for item in tables:
        if not isinstance(item, Table) and not callable(item):
            raise ValueError(f"`tables` holds {item!r}; pass bench.Table objects or functions () -> Table.")
    return tables


# ---- 2. manifest ----------------------------------------------------------------------------------------------------


def _first_difference(old, new, path: str = "") -> str | None:
    """Where two JSON values differ, as `key.sub: old there, new now`; None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(dict.fromkeys([*old, *new])):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if old != new:
        show = lambda v: repr(v) if len(repr(v)) < 80 else repr(v)[:77] + "..."  # noqa: E731
        return f"{path or 'configuration'}: {show(old)} there, {show(new)} now"
    return None


class _Manifest:
    """`out_dir/manifest.json`: the run's configuration. A batch is finished when its file exists (written
    atomically, with its images, verdicts, scores and seconds), so processes sharing `out_dir` need no shared log."""

    def __init__(self, out_dir: Path, config: dict, resume: bool, main: bool = True):
        self.path, self.config = out_dir / MANIFEST, config
        if self.path.exists() and resume:
            found = json.loads(self.path.read_text(encoding="utf-8"))
            difference = _first_difference(found["config"], config)
            if difference:
                raise ValueError(
                    f"`out_dir` {out_dir} holds a run of another configuration ({difference}); pass another "
                    "`out_dir`, or start it afresh (`resume=False`, `discadapt demo --restart`)."
                )
        elif (out_dir / "batches").exists() and main:
            shutil.rmtree(out_dir / "batches")  # an earlier run's images, discarded (resume=False)
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps({"config": config}, indent=1) + "\n")


def _batch_file(out_dir: Path, j: int, b: int) -> Path:
    return out_dir / "batches" / f"method{j:02d}" / f"{b:05d}.npz"


def _save_batch(path: Path, images: np.ndarray, verdicts: list | None, scores: list, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": images, "seconds": np.array(seconds, dtype=np.float64)}
    if verdicts is not None:
        arrays["ok"] = np.array([bool(v.ok) for v in verdicts])
        arrays["marginal"] = np.array([bool(v.marginal) for v in verdicts])
        arrays["reason"] = np.array([str(v.reason) for v in verdicts], dtype=str)
    arrays.update({f"score{k}": np.asarray(v, dtype=np.float64) for k, v in enumerate(scores)})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(path, write)


class _Verdict:
    """A verdict read back from a batch file."""

    __slots__ = ("ok", "reason", "marginal")

    def __init__(self, ok: bool, reason: str, marginal: bool):
        self.ok, self.reason, self.marginal = ok, reason, marginal


class _Batch:
    """One method's batch read back: images, verdicts (None without a judge), scores per metric, seconds."""

    def __init__(self, images: np.ndarray, verdicts: list | None, scores: list[np.ndarray], seconds: float):
        self.images, self.verdicts, self.scores, self.seconds = images, verdicts, scores, seconds


def _load_batch(path: Path, judged: bool, n_metrics: int) -> _Batch | None:
    """The batch in `path`, or None where it is missing, damaged, or lacks what this suite scores (redone)."""
    needed = ["images", "seconds", *(["ok", "reason", "marginal"] if judged else [])]
    needed += [f"score{k}" for k in range(n_metrics)]
    try:
        with np.load(path) as found:
            if not all(key in found.files for key in needed):
                return None
            verdicts = None
            if judged:
                rows = zip(found["ok"], found["reason"], found["marginal"])
                verdicts = [_Verdict(bool(o), str(r), bool(m)) for o, r, m in rows]
            scores = [found[f"score{k}"] for k in range(n_metrics)]
            return _Batch(found["images"], verdicts, scores, float(found["seconds"]))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


# ---- 3. images, batches interleaved ---------------------------------------------------------------------------------


def _batches(suite: Suite, batch_size: int) -> list[slice]:
    n = len(suite.jobs())
    return [slice(b, b + batch_size) for b in range(0, n, batch_size)]


def _run_batch(suite: Suite, name: str, fn: Method, prompts: list[str], seeds: list[int]) -> _Batch:
    """Generate one batch with method `fn`, then judge and score it."""
    start = time.perf_counter()
    out = fn(prompts, seeds)
    spent = time.perf_counter() - start
    out = check_images(name, out, len(prompts), suite.min_image_size)
    verdicts = None if suite.judge is None else list(suite.judge.judge(out, prompts))
    scores = []
    for metric in suite.metrics:
        value = np.asarray(metric.score(out, prompts), dtype=np.float64).reshape(-1)
        if value.shape != (len(prompts),) or not np.isfinite(value).all():
            raise ValueError(f"metric {metric.name!r} returned {value[:4]!r} for {len(prompts)} images; return (N,).")
        scores.append(value)
    return _Batch(out, verdicts, scores, spent)


def _generate(suite: Suite, methods: dict, out_dir: Path, batch_size: int, progress: bool, shard: tuple) -> None:
    """This process's share of the batches (batch b goes to process b % processes), every method, interleaved;
    batches already in `out_dir` are kept, not redone."""
    rank, processes = shard
    texts = [suite.prompts[i].text for i, _ in suite.jobs()]
    seeds = suite.seeds()
    mine = [(b, batch) for b, batch in enumerate(_batches(suite, batch_size)) if b % processes == rank]
    judged = suite.judge is not None
    with tqdm(total=len(mine) * len(methods), desc=suite.name, unit="batch", disable=not progress) as bar:
        for b, batch in mine:
            for j, (name, fn) in enumerate(methods.items()):
                path = _batch_file(out_dir, j, b)
                if _load_batch(path, judged, len(suite.metrics)) is None:
                    done = _run_batch(suite, name, fn, texts[batch], seeds[batch])
                    _save_batch(path, done.images, done.verdicts, done.scores, done.seconds)
                bar.update(1)
                bar.set_postfix(method=name)


def _collect(suite: Suite, methods: dict, out_dir: Path, batch_size: int):
    """Every batch read back (all processes'): images, verdicts, accuracy and score metrics, seconds per method."""
    cats = [suite.prompts[i].category for i, _ in suite.jobs()]
    groups = suite.groups()
    images = {name: [] for name in methods}
    verdicts = {name: [] for name in methods}
    alone = {"distributed_available_fn": lambda: False}  # every process's batches are read here: nothing to gather
    accuracy = {name: JudgeAccuracy(suite.categories, **alone) for name in methods}
    scores = {name: [ItemScore(suite.categories, **alone) for _ in suite.metrics] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for b, batch in enumerate(_batches(suite, batch_size)):
        for j, name in enumerate(methods):
            found = _load_batch(_batch_file(out_dir, j, b), suite.judge is not None, len(suite.metrics))
            if found is None:
                raise RuntimeError(f"batch {b} of method {name!r} is missing from {out_dir}; run again to finish it.")
            seconds[name] += found.seconds
            images[name].append(found.images)
            if found.verdicts is not None:
                verdicts[name] += found.verdicts
                accuracy[name].update(found.verdicts, cats[batch], groups[batch])
            for metric, value in zip(scores[name], found.scores):
                metric.update(torch.from_numpy(value), cats[batch], groups[batch])
    return {name: np.concatenate(found) for name, found in images.items()}, verdicts, accuracy, scores, seconds


# ---- 4. statistics --------------------------------------------------------------------------------------------------


def _stats(values: np.ndarray, groups: np.ndarray, mask: np.ndarray, seed: int, binary: bool = True) -> dict:
    """Accuracy (or, for scores, "mean"), 95% interval (resampling groups) and counts of the images in `mask`."""
    ci = bootstrap_ci(values[mask], seed=seed, groups=groups[mask], binary=binary)
    key = "accuracy" if binary else "mean"
    return {key: ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n_prompts": ci.n_groups, "n_images": ci.n}


def _scores(values: np.ndarray, groups: np.ndarray, cats: np.ndarray, splits: np.ndarray, suite: Suite, binary=True):
    """Per category, per split (all and per category) and overall stats of one method's `(n_images,)` outcomes
    (`binary`) or scores."""
    seed = suite.seed
    stats = lambda mask: _stats(values, groups, mask, seed, binary)  # noqa: E731
    by_split = {}
    for split in suite.splits:
        mask = splits == split
        by_split[split] = {
            "all": stats(mask),
            "categories": {c: stats(mask & (cats == c)) for c in suite.categories if (mask & (cats == c)).any()},
        }
    return {
        "categories": {c: stats(cats == c) for c in suite.categories},
        "splits": by_split,
        "overall": stats(np.ones(values.shape, dtype=bool)),
    }


def _differences(values: dict, groups: np.ndarray, cats: np.ndarray, suite: Suite, binary: bool = True) -> dict:
    """Per method after the first, per category and over all: its accuracy (or mean score) minus the first's,
    paired by image."""
    base, out = values[next(iter(values))], {}
    masks = {**{c: cats == c for c in suite.categories}, "all": np.ones(cats.shape, dtype=bool)}
    for name in list(values)[1:]:
        out[name] = {
            key: paired_difference_ci(
                values[name][m], base[m], seed=suite.seed, groups=groups[m], binary=binary
            ).to_dict()
            for key, m in masks.items()
        }
    return out


def _image_records(suite: Suite, verdicts: list, scores: list) -> list[dict]:
    """results.json's per-image list: prompt and image index, the verdict (with a judge), the scores (with metrics)."""
    records = [{"prompt": i, "image": k} for i, k in suite.jobs()]
    for record, v in zip(records, verdicts):
        record.update(ok=bool(v.ok), reason=v.reason, marginal=bool(v.marginal))
    if suite.metrics:
        values = [metric.items()["score"] for metric in scores]
        for j, record in enumerate(records):
            record["scores"] = {m.name: float(v[j]) for m, v in zip(suite.metrics, values)}
    return records


def _per_method(suite: Suite, verdicts: dict, accuracy: dict, scores: dict, seconds: dict) -> dict:
    """results.json's "methods": timing, the judge's stats and marginal fractions, each metric's stats, per-image
    verdicts and scores, differences to the first method."""
    jobs = suite.jobs()
    cats = np.array([suite.prompts[i].category for i, _ in jobs])
    splits = np.array([suite.prompts[i].split for i, _ in jobs])
    n_images, base = len(jobs), next(iter(accuracy))
    base_rate = seconds[base] / n_images
    oks, values, per_method = {}, {m.name: {} for m in suite.metrics}, {}
    for name, metric in accuracy.items():
        entry = per_method[name] = {
            "seconds": seconds[name],
            "seconds_per_image": seconds[name] / n_images,
            "time_ratio": (seconds[name] / n_images) / base_rate if base_rate > 0 else None,
        }
        if suite.judge is not None:
            items = metric.items()
            oks[name] = items["correct"]
            entry.update(_scores(items["correct"], items["group"], cats, splits, suite))
            entry["marginal"] = metric.marginal_fraction()
        if suite.metrics:
            entry["metrics"] = {}
        for scorer, found in zip(suite.metrics, scores[name]):
            items = found.items()
            values[scorer.name][name] = items["score"]
            model = str(getattr(scorer, "model", scorer.name))
            entry["metrics"][scorer.name] = {
                "model": model,
                **_scores(items["score"], items["group"], cats, splits, suite, False),
            }
        entry["images"] = _image_records(suite, verdicts[name], scores[name])
    groups = suite.groups()
    for name, found in _differences(oks, groups, cats, suite).items() if oks else ():
        per_method[name]["difference_to_base"] = found
    for metric, by_method in values.items():
        for name, found in _differences(by_method, groups, cats, suite, binary=False).items():
            per_method[name]["metrics"][metric]["difference_to_base"] = found
    return per_method


# ---- 5. tables and report -------------------------------------------------------------------------------------------


def _value(stats: dict) -> float:
    """The estimate of a stats dict: an accuracy, or a metric's mean."""
    return stats["accuracy"] if "accuracy" in stats else stats["mean"]


def _cell(stats: dict | None) -> str:
    return "" if stats is None else f"{_value(stats):.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def _split_table(per_method: dict, suite: Suite) -> Table:
    """Method x split rows (each split, then all prompts) of `acc [lo, hi]` per category and over all categories."""
    body, categories = [], suite.categories
    for name, m in per_method.items():
        for split in suite.splits:
            found = m["splits"][split]
            body.append([name, split, *[_cell(found["categories"].get(c)) for c in categories], _cell(found["all"])])
        body.append([name, "all", *[_cell(m["categories"][c]) for c in categories], _cell(m["overall"])])
    return Table("accuracy per split [95% CI over prompts]", ["method", "split", *categories, "all"], body)


def _difference_table(per_method: dict, suite: Suite, metric: str | None = None) -> Table:
    """Each method's difference to the first, per category: the judge's accuracy, or `metric`'s mean."""
    base = next(iter(per_method))
    of = lambda m: m if metric is None else m["metrics"][metric]  # noqa: E731
    cell = lambda d: f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"  # noqa: E731
    rows = [
        [
            name,
            *[cell(of(m)["difference_to_base"][c]) for c in suite.categories],
            cell(of(m)["difference_to_base"]["all"]),
        ]
        for name, m in per_method.items()
        if "difference_to_base" in of(m)
    ]
    what = "accuracy" if metric is None else metric
    return Table(
        f"difference to {base}{'' if metric is None else f' in {metric}'} [95% CI, paired: same prompts and seeds]",
        ["method", *suite.categories, "all"],
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


def _report_rows(suite: Suite, per_method: dict, images: dict, verdicts: dict, grid_images: int) -> list[ReportRow]:
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
                scores = lambda j: "; ".join(f"{k} {v:.3f}" for k, v in records[j].get("scores", {}).items())  # noqa: E731
                rows.append(
                    ReportRow(
                        name,
                        c,
                        _value(stats),
                        stats["ci_low"],
                        stats["ci_high"],
                        stats["n_prompts"],
                        stats["n_images"],
                        images=stacked[shown_here],
                        captions=[
                            f"{suite.prompts[jobs[j][0]].text} ({suite.prompts[jobs[j][0]].split})" for j in shown_here
                        ],
                        passed=[verdicts[name][j].ok if suite.judge is not None else None for j in shown_here],
                        notes=[verdicts[name][j].reason if suite.judge is not None else scores(j) for j in shown_here],
                        metric="accuracy" if metric is None else metric,
                    )  # fmt: skip
                )
    return rows


def _tables(per_method: dict, suite: Suite, n_methods: int) -> list[Table]:
    """The judge's per-split, difference and marginal tables, each metric's difference table, the timing table."""
    shown = []
    if suite.judge is not None:
        shown += [_split_table(per_method, suite)]
        shown += [_difference_table(per_method, suite)] if n_methods > 1 else []
        shown += [_marginal_table(per_method, suite)]
    shown += [_difference_table(per_method, suite, m.name) for m in suite.metrics] if n_methods > 1 else []
    return shown + [_timing_table(per_method, suite)]


def _check_shard(shard) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    ok = isinstance(shard, tuple) and len(shard) == 2 and all(isinstance(v, int) for v in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"`shard` is {shard!r}; pass (process index, number of processes), 0 <= index < number.")
    return shard


def _computed(tables: list) -> list[Table]:
    out = [item if isinstance(item, Table) else item() for item in tables]
    for item, table in zip(tables, out):
        if not isinstance(table, Table):
            raise ValueError(f"`tables` function {item!r} returned {table!r}; return a bench.Table.")
    return out


def run_suite(
    suite: Suite,
    methods: Mapping[str, Method],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = BATCH_SIZE,
    tables: Sequence[Table | Callable[[], Table]] = (),
    settings: Mapping | None = None,
    title: str | None = None,
    resume: bool = True,
    progress: bool = True,
    grid_images: int = GRID_IMAGES,
    started: float | None = None,
    shard: tuple[int, int] | None = None,
    barrier: Callable[[], None] = lambda: None,
    image_tables: Sequence[Callable[[Mapping[str, np.ndarray]], Table]] = (),
) -> dict | None:
    """Run `methods` on `suite` (see the module docstring): images, verdicts, statistics, tables and a report.

    Args:
        suite (Suite): prompts, images per prompt, seeds and judge.
        methods (Mapping[str, Method]): name -> `(prompts, seeds) -> (N, S, S, 3)` uint8 images; the first is the
            baseline of the differences and time ratios.
        out_dir (str | PathLike): output folder (created): manifest.json, batches/, results.json, report.html.
        batch_size (int): images per method call, >= 1. Default `BATCH_SIZE` (50).
        tables (Sequence[Table | Callable[[], Table]]): further tables, or functions computing one after the images;
            printed, stored under "tables" and reported. Default none.
        settings (Mapping | None): JSON-ready settings of the caller (steps, guidance, pipeline, ...): listed in the
            report, stored in results.json, and part of the configuration a resumed run must match. Default None.
        title (str | None): report title. Default "discadapt bench: <suite name>".
        resume (bool): continue a run of the same configuration in `out_dir` (refusing another); False discards
            what `out_dir` holds of an earlier run. Default True.
        progress (bool): a tqdm bar over batches (stderr). Default True.
        grid_images (int): images shown per method and category in report.html. Default `GRID_IMAGES` (40).
        started (float | None): a `time.perf_counter()` reading from which "seconds" counts (e.g. before loading a
            pipeline); None: the call. Default None.
        shard (tuple[int, int] | None): `(process index, number of processes)` of a run shared by processes (e.g.
            `accelerate launch`: `PartialState().process_index, .num_processes`): each process draws batches b with
            b % number == index; the first merges them. None: one process. Default None.
        barrier (Callable[[], None]): waits for every process (e.g. `PartialState().wait_for_everyone`); called
            after the folder is checked and after the batches are drawn. Default: no-op.
        image_tables (Sequence[Callable]): functions `images -> Table` of every method's images (`{name: (N, S, S,
            3) uint8}`), e.g. `bench.fid_table.fid_table` (FID against real images); after `tables`. Default none.

    Returns:
        dict | None: the content of results.json (None in every process but the first of a sharded run):
        - "settings": `settings`, then seed, images_per_prompt, batch_size, suite, judge, ci, versions.
        - "prompts": [{"text", "category", "split", "seeds"}], in order.
        - "methods": {name: {"seconds", "seconds_per_image", "time_ratio" (to the first method), "categories":
          {category: stats}, "splits": {split: {"all": stats, "categories": {category: stats}}}, "overall": stats,
          "marginal": {category or "all": fraction of marginal verdicts}, "images": [{"prompt", "image", "ok",
          "reason", "marginal"}], "difference_to_base" (all but the first): {category or "all": {"estimate", "low",
          "high", "n", "n_groups", "level"}}}}, where stats = {"accuracy", "ci_low", "ci_high", "n_prompts",
          "n_images"}. Without a judge, none of the accuracy keys. With metrics: "metrics": {metric name: {"model",
          "categories", "splits", "overall" (stats with "mean" for "accuracy"), "difference_to_base"}}, and each
          image's "scores": {metric name: score}.
        - "tables": the further tables as {"title", "columns", "rows", "note"}.
        - "seconds": wall time since `started`.

    Raises:
        ValueError: a bad argument (naming it), a method returning images of the wrong type or shape, a table
            function returning something else, or `out_dir` holding a run of another configuration.
    """
    # 1. check everything before any work
    started = time.perf_counter() if started is None else started
    if not isinstance(suite, Suite):
        raise ValueError(f"`suite` is a {type(suite).__name__}; pass a bench.Suite.")
    methods, tables = _check_methods(methods), _check_tables(tables)
    if not all(callable(fn) for fn in image_tables):
        raise ValueError(f"`image_tables` is {image_tables!r}; pass functions images -> bench.Table.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
    if not isinstance(resume, bool):
        raise ValueError(f"`resume` is {resume!r}; pass True or False.")
    settings = dict(settings or {})
    settings.update(seed=suite.seed, images_per_prompt=suite.images_per_prompt, batch_size=int(batch_size))
    settings.update(suite=suite.name, judge=None if suite.judge is None else suite.judge.name, ci=CI)
    settings.update(versions=versions())
    rank, processes = _check_shard(shard)
    # 2. the manifest: a run of the same configuration continues, another is refused
    out = Path(out_dir)
    config = {**suite.config(), "methods": list(methods), "settings": settings}
    config = json.loads(json.dumps(config))
    if rank == 0:
        _Manifest(out, config, resume)
        clean_temporary(out)
    barrier()  # the first process has checked (or cleared) the folder before any other writes to it
    if rank != 0:
        _Manifest(out, config, resume=True, main=False)  # the same configuration in every process
    # 3. images, verdicts and scores, batches interleaved across methods; this process's share of the batches
    _generate(suite, methods, out, int(batch_size), progress, (rank, processes))
    barrier()  # every process has written its batches
    if rank != 0:
        return None
    images, verdicts, accuracy, scores, seconds = _collect(suite, methods, out, int(batch_size))
    # 4. statistics
    per_method = _per_method(suite, verdicts, accuracy, scores, seconds)
    extra = _computed(tables) + _computed([partial(fn, images) for fn in image_tables])
    # 5. tables, results.json, report.html
    seeds, n = suite.seeds(), suite.images_per_prompt
    results = {
        "settings": settings,
        "prompts": [
            {"text": p.text, "category": p.category, "split": p.split, "seeds": seeds[i * n : (i + 1) * n]}
            for i, p in enumerate(suite.prompts)
        ],
        "methods": per_method,
        "tables": [t.to_dict() for t in extra],
    }
    rows = _report_rows(suite, per_method, images, verdicts, grid_images)
    shown = _tables(per_method, suite, len(methods)) + extra
    for metric in dict.fromkeys(r.metric for r in rows):
        of = [r for r in rows if r.metric == metric]
        print(accuracy_table(of, f"{metric} per category [95% CI over prompts]").format(), end="\n\n")
    for table in shown:
        print(table.format(), end="\n\n")
    results["seconds"] = time.perf_counter() - started
    paths = write_report(out, results, rows, shown, title or f"discadapt bench: {suite.name}", settings)
    print(f"wrote {paths['results']} and {paths['report']} ({results['seconds']:.1f} s)")
    sys.stdout.flush()
    return results
