"""The evaluation runner: methods x a suite's prompts and seeds -> judged images, intervals, tables, a report.

`run_suite(suite, methods, out_dir)`:

1. Check: the suite (`bench.Suite`), the methods (name -> `(prompts, seeds) -> (N, S, S, 3)` uint8, the first is
   the baseline every other is compared with), the tables; nothing is written before these checks pass.
2. Manifest: `out_dir/manifest.json` records the run's configuration (the suite's prompts, seeds and judge, the
   methods' names, the batch size and the caller's `settings`) and every finished (batch, method) with its wall
   time. A rerun with the same configuration continues where the last one stopped (killed or failed); a rerun with
   another configuration is refused, unless `resume=False` discards the earlier run.
3. Images, batches interleaved: every method runs batch b before any method runs batch b + 1, so the methods share
   the machine's load and their wall-time ratios are fair. Each batch's images and the judge's verdicts are written
   to `out_dir/batches/<method>/<batch>.npz` (atomically) as soon as they are done, then the manifest.
4. Statistics (`bench.stats`), from per-image outcomes kept in a `metrics.JudgeAccuracy` per method: accuracy per
   category, per split and over all, with 95% percentile-bootstrap intervals that resample prompts; every other
   method's difference to the baseline, paired image by image (same prompt, same seed); the fraction of marginal
   verdicts; wall time per image and its ratio to the baseline's.
5. Output: the tables printed (accuracy per category, per split, difference to the baseline, marginal verdicts, time,
   then the caller's `tables`), `results.json` and a self-contained `report.html` (`bench.write_report`).

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..io import clean_temporary, write_atomic
from ..metrics import JudgeAccuracy
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
    """`out_dir/manifest.json`: the configuration and the finished (batch, method) pairs with their seconds."""

    def __init__(self, out_dir: Path, config: dict, resume: bool):
        self.path, self.config = out_dir / MANIFEST, config
        self.done: dict[str, dict[int, float]] = {}  # method -> batch -> seconds
        if self.path.exists() and resume:
            found = json.loads(self.path.read_text(encoding="utf-8"))
            difference = _first_difference(found["config"], config)
            if difference:
                raise ValueError(
                    f"`out_dir` {out_dir} holds a run of another configuration ({difference}); pass another "
                    "`out_dir`, or start it afresh (`resume=False`, `discadapt demo --restart`)."
                )
            self.done = {m: {int(b): float(s) for b, s in batches.items()} for m, batches in found["done"].items()}
        elif (out_dir / "batches").exists():
            shutil.rmtree(out_dir / "batches")  # an earlier run's images, discarded (resume=False)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.write()

    def write(self) -> None:
        done = {m: {str(b): s for b, s in sorted(batches.items())} for m, batches in self.done.items()}
        write_atomic(self.path, json.dumps({"config": self.config, "done": done}, indent=1) + "\n")

    def seconds(self, method: str, batch: int) -> float | None:
        return self.done.get(method, {}).get(batch)

    def finish(self, method: str, batch: int, seconds: float) -> None:
        self.done.setdefault(method, {})[batch] = seconds
        self.write()


def _batch_file(out_dir: Path, j: int, b: int) -> Path:
    return out_dir / "batches" / f"method{j:02d}" / f"{b:05d}.npz"


def _save_batch(path: Path, images: np.ndarray, verdicts: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "images": images,
        "ok": np.array([bool(v.ok) for v in verdicts]),
        "marginal": np.array([bool(v.marginal) for v in verdicts]),
        "reason": np.array([str(v.reason) for v in verdicts], dtype=str),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(path, write)


class _Verdict:
    """A verdict read back from a batch file."""

    __slots__ = ("ok", "reason", "marginal")

    def __init__(self, ok: bool, reason: str, marginal: bool):
        self.ok, self.reason, self.marginal = ok, reason, marginal


def _load_batch(path: Path) -> tuple[np.ndarray, list]:
    with np.load(path) as found:
        verdicts = [
            _Verdict(bool(o), str(r), bool(m)) for o, r, m in zip(found["ok"], found["reason"], found["marginal"])
        ]
        return found["images"], verdicts


# ---- 3. images, batches interleaved ---------------------------------------------------------------------------------


def _generate(suite: Suite, methods: dict, out_dir: Path, manifest: _Manifest, batch_size: int, progress: bool):
    """Images, verdicts (in job order) and seconds per method; finished batches are read back, not redone."""
    texts = [suite.prompts[i].text for i, _ in suite.jobs()]
    seeds = suite.seeds()
    cats = [suite.prompts[i].category for i, _ in suite.jobs()]
    groups = suite.groups()
    batches = [slice(b, b + batch_size) for b in range(0, len(texts), batch_size)]
    images = {name: [] for name in methods}
    verdicts = {name: [] for name in methods}
    metrics = {name: JudgeAccuracy(suite.categories) for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    with tqdm(total=len(batches) * len(methods), desc=suite.name, unit="batch", disable=not progress) as bar:
        for b, batch in enumerate(batches):
            for j, (name, fn) in enumerate(methods.items()):
                path, spent = _batch_file(out_dir, j, b), manifest.seconds(name, b)
                if spent is not None and path.exists():
                    out, judged = _load_batch(path)
                else:
                    start = time.perf_counter()
                    out = fn(texts[batch], seeds[batch])
                    spent = time.perf_counter() - start
                    out = check_images(name, out, len(texts[batch]), suite.min_image_size)
                    judged = list(suite.judge.judge(out, texts[batch]))
                    _save_batch(path, out, judged)
                    manifest.finish(name, b, spent)
                seconds[name] += spent
                images[name].append(out)
                verdicts[name] += judged
                metrics[name].update(judged, cats[batch], groups[batch])
                bar.update(1)
                bar.set_postfix(method=name)
    return {name: np.concatenate(found) for name, found in images.items()}, verdicts, metrics, seconds


# ---- 4. statistics --------------------------------------------------------------------------------------------------


def _stats(ok: np.ndarray, groups: np.ndarray, mask: np.ndarray, seed: int) -> dict:
    """Accuracy, 95% interval (resampling groups) and counts of the images in `mask`."""
    ci = bootstrap_ci(ok[mask], seed=seed, groups=groups[mask])
    return {"accuracy": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n_prompts": ci.n_groups, "n_images": ci.n}


def _scores(ok: np.ndarray, groups: np.ndarray, cats: np.ndarray, splits: np.ndarray, suite: Suite) -> dict:
    """Per category, per split (all and per category) and overall stats of one method's `(n_images,)` outcomes."""
    seed = suite.seed
    by_split = {}
    for split in suite.splits:
        mask = splits == split
        by_split[split] = {
            "all": _stats(ok, groups, mask, seed),
            "categories": {
                c: _stats(ok, groups, mask & (cats == c), seed) for c in suite.categories if (mask & (cats == c)).any()
            },
        }
    return {
        "categories": {c: _stats(ok, groups, cats == c, seed) for c in suite.categories},
        "splits": by_split,
        "overall": _stats(ok, groups, np.ones(ok.shape, dtype=bool), seed),
    }


def _differences(ok: dict, groups: np.ndarray, cats: np.ndarray, suite: Suite) -> dict:
    """Per method after the first, per category and over all: its accuracy minus the first's, paired by image."""
    base, out = ok[next(iter(ok))], {}
    masks = {**{c: cats == c for c in suite.categories}, "all": np.ones(cats.shape, dtype=bool)}
    for name in list(ok)[1:]:
        out[name] = {
            key: paired_difference_ci(ok[name][m], base[m], seed=suite.seed, groups=groups[m]).to_dict()
            for key, m in masks.items()
        }
    return out


def _per_method(suite: Suite, verdicts: dict, metrics: dict, seconds: dict) -> dict:
    """results.json's "methods": timing, stats, marginal fractions, per-image verdicts, differences to the first."""
    jobs = suite.jobs()
    cats = np.array([suite.prompts[i].category for i, _ in jobs])
    splits = np.array([suite.prompts[i].split for i, _ in jobs])
    n_images, base = len(jobs), next(iter(metrics))
    base_rate = seconds[base] / n_images
    oks, per_method = {}, {}
    for name, metric in metrics.items():
        items = metric.items()
        oks[name] = items["correct"]
        per_method[name] = {
            "seconds": seconds[name],
            "seconds_per_image": seconds[name] / n_images,
            "time_ratio": (seconds[name] / n_images) / base_rate if base_rate > 0 else None,
            **_scores(items["correct"], items["group"], cats, splits, suite),
            "marginal": metric.marginal_fraction(),
            "images": [
                {"prompt": i, "image": k, "ok": bool(v.ok), "reason": v.reason, "marginal": bool(v.marginal)}
                for (i, k), v in zip(jobs, verdicts[name])
            ],
        }
    for name, found in _differences(oks, suite.groups(), cats, suite).items():
        per_method[name]["difference_to_base"] = found
    return per_method


# ---- 5. tables and report -------------------------------------------------------------------------------------------


def _cell(stats: dict | None) -> str:
    return "" if stats is None else f"{stats['accuracy']:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def _split_table(per_method: dict, suite: Suite) -> Table:
    """Method x split rows (each split, then all prompts) of `acc [lo, hi]` per category and over all categories."""
    body, categories = [], suite.categories
    for name, m in per_method.items():
        for split in suite.splits:
            found = m["splits"][split]
            body.append([name, split, *[_cell(found["categories"].get(c)) for c in categories], _cell(found["all"])])
        body.append([name, "all", *[_cell(m["categories"][c]) for c in categories], _cell(m["overall"])])
    return Table("accuracy per split [95% CI over prompts]", ["method", "split", *categories, "all"], body)


def _difference_table(per_method: dict, suite: Suite) -> Table:
    base = next(iter(per_method))
    cell = lambda d: f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"  # noqa: E731
    rows = [
        [name, *[cell(m["difference_to_base"][c]) for c in suite.categories], cell(m["difference_to_base"]["all"])]
        for name, m in per_method.items()
        if "difference_to_base" in m
    ]
    return Table(
        f"difference to {base} [95% CI, paired: same prompts and seeds]",
        ["method", *suite.categories, "all"],
        rows,
        note=f"accuracy minus the {base} row's, image by image (same prompt, same seed); prompts resampled",
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


def _timing_table(per_method: dict, suite: Suite) -> Table:
    base, n_images = next(iter(per_method)), len(suite.jobs())
    return Table(
        "time per image",
        ["method", "images", "seconds", "s / image", f"ratio to {base}"],
        [[name, n_images, m["seconds"], m["seconds_per_image"], m["time_ratio"]] for name, m in per_method.items()],
        note=f"wall time of the method's calls (generation only, not the {suite.judge.name}), batches interleaved "
        "across methods",
    )


def _report_rows(suite: Suite, per_method: dict, images: dict, verdicts: dict, grid_images: int) -> list[ReportRow]:
    """A `ReportRow` per method and category, showing the first image of each prompt (at most `grid_images`)."""
    jobs, rows = suite.jobs(), []
    cats = np.array([suite.prompts[i].category for i, _ in jobs])
    first = np.array([k == 0 for _, k in jobs])
    for name, stacked in images.items():
        for c in suite.categories:
            stats = per_method[name]["categories"][c]
            shown = np.flatnonzero(first & (cats == c))[:grid_images]
            rows.append(
                ReportRow(
                    name,
                    c,
                    stats["accuracy"],
                    stats["ci_low"],
                    stats["ci_high"],
                    stats["n_prompts"],
                    stats["n_images"],
                    images=stacked[shown],
                    captions=[f"{suite.prompts[jobs[j][0]].text} ({suite.prompts[jobs[j][0]].split})" for j in shown],
                    passed=[verdicts[name][j].ok for j in shown],
                    notes=[verdicts[name][j].reason for j in shown],
                )  # fmt: skip
            )
    return rows


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
) -> dict:
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

    Returns:
        dict: the content of results.json:
        - "settings": `settings`, then seed, images_per_prompt, batch_size, suite, judge, ci, versions.
        - "prompts": [{"text", "category", "split", "seeds"}], in order.
        - "methods": {name: {"seconds", "seconds_per_image", "time_ratio" (to the first method), "categories":
          {category: stats}, "splits": {split: {"all": stats, "categories": {category: stats}}}, "overall": stats,
          "marginal": {category or "all": fraction of marginal verdicts}, "images": [{"prompt", "image", "ok",
          "reason", "marginal"}], "difference_to_base" (all but the first): {category or "all": {"estimate", "low",
          "high", "n", "n_groups", "level"}}}}, where stats = {"accuracy", "ci_low", "ci_high", "n_prompts",
          "n_images"}.
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
    if not isinstance(resume, bool):
        raise ValueError(f"`resume` is {resume!r}; pass True or False.")
    settings = dict(settings or {})
    settings.update(seed=suite.seed, images_per_prompt=suite.images_per_prompt, batch_size=int(batch_size))
    settings.update(suite=suite.name, judge=suite.judge.name, ci=CI, versions=versions())
    # 2. the manifest: a run of the same configuration continues, another is refused
    out = Path(out_dir)
    config = {**suite.config(), "methods": list(methods), "settings": settings}
    manifest = _Manifest(out, json.loads(json.dumps(config)), resume)
    clean_temporary(out)
    # 3. images and verdicts, batches interleaved across methods
    images, verdicts, metrics, seconds = _generate(suite, methods, out, manifest, int(batch_size), progress)
    # 4. statistics
    per_method = _per_method(suite, verdicts, metrics, seconds)
    extra = _computed(tables)
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
    shown = [_split_table(per_method, suite)]
    shown += [_difference_table(per_method, suite)] if len(methods) > 1 else []
    shown += [_marginal_table(per_method, suite), _timing_table(per_method, suite), *extra]
    for table in (accuracy_table(rows, "accuracy per category [95% CI over prompts]"), *shown):
        print(table.format(), end="\n\n")
    results["seconds"] = time.perf_counter() - started
    paths = write_report(out, results, rows, shown, title or f"discadapt bench: {suite.name}", settings)
    print(f"wrote {paths['results']} and {paths['report']} ({results['seconds']:.1f} s)")
    sys.stdout.flush()
    return results
