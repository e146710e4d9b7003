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
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import clean_temporary
from ..metrics import ItemScore, JudgeAccuracy
from .methods import Method, check_images
from .report import Table, accuracy_table, write_report
from .stats import bootstrap_ci, paired_difference_ci
from .store import Batch, Manifest, batch_file, load_batch, save_batch
from .suite import Suite
from .tables import report_rows, result_tables

__all__ = ["BATCH_SIZE", "CI", "GRID_IMAGES", "run_suite", "versions"]

BATCH_SIZE = 50  # images per method call
GRID_IMAGES = 40  # images shown per method and category in report.html (the first image of each prompt)
CI = "95% percentile bootstrap over prompts"


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


# ---- 2. images, batches interleaved (their files: store.py) ---------------------------------------------------------


def _batches(suite: Suite, batch_size: int) -> list[slice]:
    n = len(suite.jobs())
    return [slice(b, b + batch_size) for b in range(0, n, batch_size)]


def _run_batch(suite: Suite, name: str, fn: Method, prompts: list[str], seeds: list[int]) -> Batch:
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
    return Batch(out, verdicts, scores, spent)


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
                path = batch_file(out_dir, j, b)
                if load_batch(path, judged, len(suite.metrics)) is None:
                    done = _run_batch(suite, name, fn, texts[batch], seeds[batch])
                    save_batch(path, done.images, done.verdicts, done.scores, done.seconds)
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
            found = load_batch(batch_file(out_dir, j, b), suite.judge is not None, len(suite.metrics))
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


# ---- 3. statistics (tables and report rows: tables.py) --------------------------------------------------------------


def _stats(values: np.ndarray, groups: np.ndarray, mask: np.ndarray, seed: int, binary: bool = True) -> dict:
    """Accuracy (or, for scores, "mean"), 95% interval (resampling groups) and counts of the images in `mask`."""
    ci = bootstrap_ci(values[mask], seed=seed, groups=groups[mask], binary=binary)
    key = "accuracy" if binary else "mean"
    return {key: ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n_prompts": ci.n_groups, "n_images": ci.n}


def _scores(values: np.ndarray, groups: np.ndarray, cats: np.ndarray, splits: np.ndarray, suite: Suite, binary=True):
    """Per category, per pool (`Suite.pools`), per split (all, per category and per pool) and overall stats of one
    method's `(n_images,)` outcomes (`binary`) or scores."""
    seed = suite.seed
    stats = lambda mask: _stats(values, groups, mask, seed, binary)  # noqa: E731
    pooled = _pooled(suite, cats)

    def pools(mask: np.ndarray) -> dict:  # a "pools" entry where the suite has pools
        return {"pools": {p: stats(mask & m) for p, m in pooled.items() if (mask & m).any()}} if pooled else {}

    by_split = {}
    for split in suite.splits:
        mask = splits == split
        by_split[split] = {
            "all": stats(mask),
            "categories": {c: stats(mask & (cats == c)) for c in suite.categories if (mask & (cats == c)).any()},
            **pools(mask),
        }
    everything = np.ones(values.shape, dtype=bool)
    return {
        "categories": {c: stats(cats == c) for c in suite.categories},
        **pools(everything),
        "splits": by_split,
        "overall": stats(everything),
    }


def _pooled(suite: Suite, cats: np.ndarray) -> dict[str, np.ndarray]:
    """The images of each of the suite's pools (`Suite.pools`): a mask over its categories."""
    return {name: np.isin(cats, members) for name, members in suite.pools.items()}


def _differences(values: dict, groups: np.ndarray, cats: np.ndarray, suite: Suite, binary: bool = True) -> dict:
    """Per method after the first, per category, pool and over all: its accuracy (or mean score) minus the first's,
    paired by image."""
    base, out = values[next(iter(values))], {}
    masks = {**{c: cats == c for c in suite.categories}, **_pooled(suite, cats), "all": np.ones(cats.shape, dtype=bool)}
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
        - "prompts": [{"text", "category", "split", "seeds"}, and "group" where the prompt has one], in order.
        - "methods": {name: {"seconds", "seconds_per_image", "time_ratio" (to the first method), "categories":
          {category: stats}, "splits": {split: {"all": stats, "categories": {category: stats}}}, "overall": stats,
          "marginal": {category or "all": fraction of marginal verdicts}, "images": [{"prompt", "image", "ok",
          "reason", "marginal"}], "difference_to_base" (all but the first): {category, pool or "all": {"estimate",
          "low", "high", "n", "n_groups", "level"}}}}, and with `suite.pools` "pools": {pool: stats} beside
          "categories" (also in each split), where stats = {"accuracy", "ci_low", "ci_high", "n_prompts",
          "n_images"}. Without a judge, none of the accuracy keys. With metrics: "metrics": {metric name: {"model",
          "categories", "splits", "overall" (stats with "mean" for "accuracy"), "difference_to_base"}}, and each
          image's "scores": {metric name: score}.
        - "pools" (with `suite.pools`): {pool: [category, ...]}.
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
        Manifest(out, config, resume)
        clean_temporary(out)
    barrier()  # the first process has checked (or cleared) the folder before any other writes to it
    if rank != 0:
        Manifest(out, config, resume=True, main=False)  # the same configuration in every process
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
            | ({} if p.group is None else {"group": p.group})
            for i, p in enumerate(suite.prompts)
        ],
        "methods": per_method,
        **({"pools": {name: list(members) for name, members in suite.pools.items()}} if suite.pools else {}),
        "tables": [t.to_dict() for t in extra],
    }
    rows = report_rows(suite, per_method, images, verdicts, grid_images)
    shown = result_tables(per_method, suite, len(methods)) + extra
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
