"""`discadapt demo`: how well a text-to-image pipeline of the shapes world draws held-out prompts, judged by the
oracle, for the base pipeline and any further methods, with bootstrap confidence intervals and a report.

`run_demo(pipe, out_dir)`:

1. Prompts (`demo_prompts`): per category, `n_prompts` distinct captions drawn alternately from the held-out
   splits "test_id" (new scenes of the training distribution) and "test_ood" (held-out color-shape pairs and
   spatial triples); a split that runs out of distinct captions (test_ood has only 4 single-object captions)
   leaves its share to the other. Or the user's `prompts`, each parsed with the grammar for its category (split
   "user").
2. Seeds: image k of a prompt is drawn with seed `SeedSequence((seed, crc32(prompt), k))`: the same prompt gets
   the same noise in every method, every batch and every run with the same `seed`.
3. Rows ("methods"): the base pipeline first (`pipeline_method(pipe, steps, guidance)`), then each entry of
   `methods`, a function `(prompts, seeds) -> (N, S, S, 3) uint8 images` (the extension point: later work adds
   a row, e.g. self-correction, by passing a function, without touching this file). Batches are interleaved,
   every method runs batch b before any runs batch b + 1, so the methods see the same machine load; each
   method's wall time per image and its ratio to the base row are measured in the same run.
4. Scores: the oracle's verdict (`oracle.check`) on every image; per method and category (and per split) the
   accuracy with a 95% percentile bootstrap interval that resamples prompts, not images (`bench.bootstrap_ci`);
   and each method's difference to the base row, paired image by image, with its interval
   (`bench.paired_difference_ci`): the rows share prompts and seeds, so this is the sharper comparison.
5. Output: tables printed to stdout (accuracy per category, per split, difference to base, timing, then any
   `extra_tables`), and in
   `out_dir` (created) `results.json` and a self-contained `report.html` (`bench.write_report`), each written
   atomically.

`extra_tables` is the second extension point, for results that are not images of a method, e.g. the adapter's
image-text matching accuracy against hard negatives per category: a `bench.Table`, or a function
`pipe -> Table` run after the images, is printed, stored under "tables" in results.json and shown in the report.

Defaults are sized for 2 CPU cores: the full demo's base row (`FULL`: 181 prompts, as single-object captions run
out at 21, and 905 images at 25 DDIM steps) takes about 1.5 minutes with the 32-pixel world, `quick=True`
(`QUICK`: 40 prompts, 80 images) about 20 seconds with loading; see `FULL` for the measurements.

Example:
    >>> from discadapt.worlds.shapes.demo import run_demo
    >>> results = run_demo(out_dir="demo-out", quick=True)  # doctest: +SKIP
    >>> results["methods"]["base"]["categories"]["single"]["accuracy"]  # doctest: +SKIP
    0.75
    >>> blank = lambda prompts, seeds: np.full((len(prompts), 32, 32, 3), 40, np.uint8)
    >>> results = run_demo(pipe, quick=True, methods={"blank": blank})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ...bench import ReportRow, Table, accuracy_table, bootstrap_ci, paired_difference_ci, write_report
from .captions import CATEGORIES, parse
from .dataset import make_example
from .oracle import check
from .palette import check_choice
from .scenes import Scene
from .splits import SPLITS

__all__ = [
    "FULL",
    "GUIDANCE",
    "QUICK",
    "DemoPrompt",
    "Method",
    "demo_prompts",
    "image_seed",
    "pipeline_method",
    "run_demo",
]

Method = Callable[[list[str], list[int]], np.ndarray]
"""A row of the demo: `(prompts, seeds) -> images`, N prompts and N seeds (one per image) to `(N, S, S, 3)` uint8."""

# Measured with the full-size world (ModelSizes(), 32 px, 25 DDIM steps, guidance 4, batch 50) on 2 CPU cores, nice'd,
# beside a training job using one core: 55-100 ms per image (varies with the load), ~0.7 ms per oracle check. Full
# demo, base row only: 84 s of generation, 95 s in all with loading; quick: 8 s of generation, 18 s in all.
FULL = {"n_prompts": 40, "images_per_prompt": 5, "steps": 25}  # 181 prompts, 905 images: ~1.5 minutes a row
QUICK = {"n_prompts": 8, "images_per_prompt": 2, "steps": 25}  # 40 prompts, 80 images: ~8 seconds a row
GUIDANCE = 4.0  # classifier-free guidance of `evaluate_world`
BATCH_SIZE = 50  # images per method call
GRID_IMAGES = 40  # images shown per method and category in report.html (the first image of each prompt)
HELD_OUT = ("test_id", "test_ood")
_PATIENCE = 200  # draws without a new caption before a split counts as exhausted


@dataclass(frozen=True)
class DemoPrompt:
    """One prompt of the demo.

    Attributes:
        text (str): the caption.
        category (str): one of `captions.CATEGORIES`.
        split (str): "test_id", "test_ood", or "user" for a prompt the user passed.
        scene (Scene | None): a scene the caption is true of (drawn prompts), None for user prompts.
    """

    text: str
    category: str
    split: str
    scene: Scene | None = None


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` is {value!r}; pass an int >= {minimum}.")
    return int(value)


def _check_categories(categories) -> list[str]:
    if categories is None:
        return list(CATEGORIES)
    categories = [categories] if isinstance(categories, str) else list(categories)
    if not categories:
        raise ValueError(f"`categories` is empty; pass one or more of {', '.join(CATEGORIES)}.")
    for category in categories:
        check_choice("category", category, CATEGORIES)
    if len(set(categories)) != len(categories):
        raise ValueError(f"`categories` is {categories!r}, with repeats; name each category once.")
    return categories


def _distinct(category: str, split: str, seed: int, image_size: int):
    """Examples of `split` with captions not seen before, in the order of `make_dataset`'s seeds."""
    seen, stale, i = set(), 0, 0
    while stale < _PATIENCE:
        example = make_example((seed, SPLITS.index(split), i), category, split, image_size=image_size)
        i += 1
        if example.caption.text in seen:
            stale += 1
            continue
        seen.add(example.caption.text)
        stale = 0
        yield DemoPrompt(example.caption.text, category, split, example.scene)


def demo_prompts(
    categories: Sequence[str] | None = None, n_prompts: int = FULL["n_prompts"], seed: int = 0, image_size: int = 32
) -> list[DemoPrompt]:
    """The held-out prompts of the demo: per category, up to `n_prompts` distinct captions, alternately from
    "test_id" and "test_ood" (step 1 of the module docstring), grouped by category.

    Args:
        categories (Sequence[str] | None): categories, in order; None means all of `CATEGORIES`. Default None.
        n_prompts (int): prompts per category, >= 1. Default `FULL["n_prompts"]` (40).
        seed (int): dataset seed (`make_dataset`'s). Default 0.
        image_size (int): side of the scenes. Default 32.

    Returns:
        list[DemoPrompt]: the prompts, with their split and a scene each caption is true of.

    Example:
        >>> [(p.text, p.split) for p in demo_prompts(["single"], n_prompts=2)]
        [('a yellow circle', 'test_id'), ('a yellow square', 'test_ood')]
    """
    categories = _check_categories(categories)
    n_prompts = _check_count("n_prompts", n_prompts)
    prompts = []
    for category in categories:
        sources = [_distinct(category, split, seed, image_size) for split in HELD_OUT]
        taken = []
        while sources and len(taken) < n_prompts:
            source = sources.pop(0)
            found = next(source, None)
            if found is not None:
                taken.append(found)
                sources.append(source)  # alternate; an exhausted split drops out
        prompts += taken
    return prompts


def image_seed(seed: int, prompt: str, k: int) -> int:
    """Seed of image `k` of `prompt` (step 2 of the module docstring): a 32-bit int.

    Example:
        >>> image_seed(0, "a red circle", 0) == image_seed(0, "a red circle", 0) != image_seed(0, "a red circle", 1)
        True
    """
    return int(np.random.SeedSequence((seed, zlib.crc32(prompt.encode("utf-8")), k)).generate_state(1)[0])


def pipeline_method(pipe, steps: int = FULL["steps"], guidance: float = GUIDANCE, **pipe_kwargs) -> Method:
    """The base row: `pipe` called on a batch of prompts with one seeded generator per image.

    Args:
        pipe (StableDiffusionPipeline): a text-to-image pipeline (`unet.config.sample_size * vae_scale_factor`
            is the image side).
        steps (int): sampler steps, >= 1. Default `FULL["steps"]` (25).
        guidance (float): classifier-free guidance scale (<= 1 turns it off). Default `GUIDANCE` (4.0).
        **pipe_kwargs: further arguments of `pipe(...)`, e.g. `eta`.

    Returns:
        Method: `(prompts, seeds) -> (N, S, S, 3)` uint8 images.

    Example:
        >>> generate = pipeline_method(pipe, steps=10)  # doctest: +SKIP
        >>> generate(["a red circle"], [0]).shape  # doctest: +SKIP
        (1, 32, 32, 3)
    """
    import torch

    steps = _check_count("steps", steps)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor

    def generate(prompts: list[str], seeds: list[int]) -> np.ndarray:
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        with torch.no_grad():
            images = pipe(
                list(prompts),
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="np",
                **pipe_kwargs,
            ).images  # (N, S, S, 3) float in [0, 1]
        return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)

    return generate


def _user_prompts(prompts) -> list[DemoPrompt]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ValueError(f"`prompts` is {prompts!r}; pass a list of captions, e.g. ['a red circle'].")
    if not prompts:
        raise ValueError("`prompts` is empty; pass one or more captions, e.g. ['a red circle'], or None.")
    out = []
    for text in prompts:
        try:
            category = parse(text).category
        except ValueError as err:
            raise ValueError(f"`prompts` holds {text!r}, not a caption of the shapes grammar: {err}") from None
        out.append(DemoPrompt(str(text), category, "user"))
    return out


def _check_methods(methods) -> dict[str, Method]:
    if methods is None:
        return {}
    if not isinstance(methods, Mapping):
        raise ValueError(f"`methods` is {type(methods).__name__}; pass a dict of row name -> function.")
    for name, fn in methods.items():
        if not isinstance(name, str) or not name or name == "base":
            raise ValueError(f"`methods` has a row named {name!r}; pass non-empty names other than 'base'.")
        if not callable(fn):
            raise ValueError(f"`methods[{name!r}]` is {fn!r}; pass a function (prompts, seeds) -> uint8 images.")
    return dict(methods)


def _check_images(name: str, images, n: int) -> np.ndarray:
    shape = getattr(images, "shape", None)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n:
        raise ValueError(
            f"method {name!r} returned {type(images).__name__} of shape {shape} and dtype "
            f"{getattr(images, 'dtype', None)} for {n} prompts; return a (N, S, S, 3) uint8 array, N = {n}."
        )
    if images.shape[3] != 3 or images.shape[1] != images.shape[2] or images.shape[1] < 32:
        raise ValueError(f"method {name!r} returned images of shape {images.shape}; return (N, S, S, 3), S >= 32.")
    return images


def _versions() -> dict[str, str]:
    import diffusers
    import scipy
    import torch

    from ... import __version__

    return {
        "discadapt": __version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def _stats(ok: np.ndarray, groups: np.ndarray, mask: np.ndarray, seed: int) -> dict:
    """Accuracy, 95% interval (resampling prompts) and counts of the images in `mask`."""
    ci = bootstrap_ci(ok[mask], seed=seed, groups=groups[mask])
    return {"accuracy": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n_prompts": ci.n_groups, "n_images": ci.n}


def _scores(ok: np.ndarray, groups: np.ndarray, cats: np.ndarray, splits: np.ndarray, categories, seed: int) -> dict:
    """Per category, per split (all and per category) and overall stats of one method's `(n_images,)` verdicts."""
    everything = np.ones(ok.shape, dtype=bool)
    by_split = {}
    for split in dict.fromkeys(splits.tolist()):
        mask = splits == split
        by_split[split] = {
            "all": _stats(ok, groups, mask, seed),
            "categories": {
                c: _stats(ok, groups, mask & (cats == c), seed) for c in categories if (mask & (cats == c)).any()
            },
        }
    return {
        "categories": {c: _stats(ok, groups, cats == c, seed) for c in categories},
        "splits": by_split,
        "overall": _stats(ok, groups, everything, seed),
    }


def _differences(ok: dict, groups: np.ndarray, cats: np.ndarray, categories, seed: int) -> dict:
    """Per method after the first ("base"), per category and over all: its accuracy minus base's, paired by image."""
    base, out = ok["base"], {}
    for name in list(ok)[1:]:
        masks = {**{c: cats == c for c in categories}, "all": np.ones(cats.shape, dtype=bool)}
        out[name] = {
            key: paired_difference_ci(ok[name][m], base[m], seed=seed, groups=groups[m]).to_dict()
            for key, m in masks.items()
        }
    return out


def _difference_table(differences: dict, categories: list[str]) -> Table:
    cell = lambda d: f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"  # noqa: E731
    return Table(
        "difference to base [95% CI, paired: same prompts and seeds]",
        ["method", *categories, "all"],
        [[name, *[cell(d[c]) for c in categories], cell(d["all"])] for name, d in differences.items()],
        note="accuracy minus the base row's, image by image (same prompt, same seed); prompts resampled",
    )


def _marginal(verdicts: list, cats: np.ndarray, categories) -> dict:
    """Per category and over all: the fraction of verdicts the oracle marks marginal (`oracle.py`)."""
    flags = np.array([v.marginal for v in verdicts], dtype=bool)
    return {**{c: float(flags[cats == c].mean()) for c in categories}, "all": float(flags.mean())}


def _marginal_table(per_method: dict, categories: list[str]) -> Table:
    return Table(
        "marginal verdicts (fraction of images)",
        ["method", *categories, "all"],
        [
            [name, *[f"{m['marginal'][c]:.3f}" for c in categories], f"{m['marginal']['all']:.3f}"]
            for name, m in per_method.items()
        ],
        note="verdicts that one reading near the oracle's cut-offs (shape score, size, a one-pixel move) would flip; "
        "a difference between rows smaller than these fractions could come from the judge",
    )


def _cell(stats: dict | None) -> str:
    return "" if stats is None else f"{stats['accuracy']:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def _split_table(per_method: dict, categories: list[str], split_names: list[str]) -> Table:
    """Method x split rows (each split, then all prompts) of `acc [lo, hi]` per category and over all categories."""
    body = []
    for name, m in per_method.items():
        for split in split_names:
            found = m["splits"][split]
            body.append([name, split, *[_cell(found["categories"].get(c)) for c in categories], _cell(found["all"])])
        body.append([name, "all", *[_cell(m["categories"][c]) for c in categories], _cell(m["overall"])])
    return Table("accuracy per split [95% CI over prompts]", ["method", "split", *categories, "all"], body)


def run_demo(
    pipe=None,
    out_dir: str | os.PathLike = "demo-out",
    *,
    quick: bool = False,
    categories: Sequence[str] | None = None,
    n_prompts: int | None = None,
    images_per_prompt: int | None = None,
    steps: int | None = None,
    guidance: float = GUIDANCE,
    seed: int = 0,
    device: str = "cpu",
    methods: Mapping[str, Method] | None = None,
    prompts: Sequence[str] | None = None,
    extra_tables: Sequence[Table | Callable] = (),
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> dict:
    """Run the demo (see the module docstring): generate, judge, print tables, write results.json and report.html.

    Args:
        pipe (StableDiffusionPipeline | str | PathLike | None): the world's pipeline (moved to `device`), or a
            local pipeline folder (loaded offline once the arguments are checked); None loads the bundled world
            (`bundle.load_pipeline`). Default None.
        out_dir (str | PathLike): output folder, created. Default "demo-out".
        quick (bool): the small settings `QUICK` instead of `FULL` for what is not given. Default False.
        categories (Sequence[str] | None): categories of the drawn prompts; None means all. Default None.
        n_prompts (int | None): drawn prompts per category, >= 1; None: 40 (8 quick). Default None.
        images_per_prompt (int | None): images per prompt, >= 1; None: 5 (2 quick). Default None.
        steps (int | None): sampler steps of the base row, >= 1; None: 25. Default None.
        guidance (float): classifier-free guidance scale of the base row. Default `GUIDANCE` (4.0).
        seed (int): seed of the prompts, the images' noise and the bootstrap, >= 0. Default 0.
        device (str): torch device of the pipeline. Default "cpu".
        methods (Mapping[str, Method] | None): further rows, name -> `(prompts, seeds) -> (N, S, S, 3)` uint8
            images; names other than "base". Default None.
        prompts (Sequence[str] | None): the user's captions instead of drawn ones (then leave `categories` and
            `n_prompts` None). Default None.
        extra_tables (Sequence[Table | Callable]): further tables, or functions `pipe -> Table` run after the
            images; printed, stored and reported. Default none.
        batch_size (int): images per method call, >= 1. Default `BATCH_SIZE` (50).
        progress (bool): show a tqdm bar over batches (on stderr). Default True.

    Returns:
        dict: the content of results.json:
        - "settings": seed, steps, guidance, n_prompts, images_per_prompt, batch_size, quick, categories,
          image_size, prompt_source ("held-out" or "user"), device, pipeline, ci ("95% percentile bootstrap over
          prompts"), versions.
        - "prompts": [{"text", "category", "split", "seeds"}], in order.
        - "methods": {name: {"seconds", "seconds_per_image", "time_ratio" (to base), "categories": {category:
          stats}, "splits": {split: {"all": stats, "categories": {category: stats}}}, "overall": stats,
          "marginal": {category or "all": fraction of marginal verdicts}, "images": [{"prompt", "image", "ok",
          "reason", "marginal"}]}}, where stats = {"accuracy", "ci_low", "ci_high",
          "n_prompts", "n_images"}.
        - "tables": extra tables as {"title", "columns", "rows", "note"}.
        - "seconds": wall time of the whole demo.

    Raises:
        ValueError: a bad argument (naming it), an unparsable or empty prompt list, a method returning images of
            the wrong type or shape.
        FileNotFoundError: `pipe` is None and the bundled weights are missing.

    Example:
        >>> results = run_demo(pipe, "demo-out", quick=True, categories=["single", "spatial"])  # doctest: +SKIP
    """
    start_all = time.perf_counter()
    # ---- check every argument before any work ----
    if isinstance(pipe, (str, os.PathLike)) and not os.path.isdir(pipe):
        raise ValueError(
            f"`pipe` is {str(pipe)!r}, not a folder; pass a diffusers pipeline folder (e.g. train_world's "
            "out_dir/pipeline), a pipeline, or None for the bundled world."
        )
    if not isinstance(quick, bool):
        raise ValueError(f"`quick` is {quick!r}; pass True or False.")
    preset = QUICK if quick else FULL
    images_per_prompt = _check_count(
        "images_per_prompt", preset["images_per_prompt"] if images_per_prompt is None else images_per_prompt
    )
    steps = _check_count("steps", preset["steps"] if steps is None else steps)
    seed = _check_count("seed", seed, minimum=0)
    batch_size = _check_count("batch_size", batch_size)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not np.isfinite(guidance):
        raise ValueError(f"`guidance` is {guidance!r}; pass a finite float, e.g. {GUIDANCE}.")
    methods = _check_methods(methods)
    tables_in = list(extra_tables)
    for item in tables_in:
        if not isinstance(item, Table) and not callable(item):
            raise ValueError(f"`extra_tables` holds {item!r}; pass bench.Table objects or functions pipe -> Table.")
    if prompts is not None:
        if categories is not None or n_prompts is not None:
            raise ValueError(
                "`prompts` was given with `categories` or `n_prompts`; these choose drawn prompts, so pass either "
                "`prompts` alone or no `prompts`."
            )
        chosen = _user_prompts(prompts)
        categories = list(dict.fromkeys(p.category for p in chosen))
    else:
        categories = _check_categories(categories)
        n_prompts = _check_count("n_prompts", preset["n_prompts"] if n_prompts is None else n_prompts)

    # ---- pipeline and prompts ----
    if pipe is None:
        from .bundle import load_pipeline

        pipe = load_pipeline(device=device)
    elif isinstance(pipe, (str, os.PathLike)):
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(pipe, local_files_only=True).to(device)
    else:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    image_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if prompts is None:
        chosen = demo_prompts(categories, n_prompts, seed, image_size)
    rows: dict[str, Method] = {"base": pipeline_method(pipe, steps, guidance), **methods}

    # ---- images and verdicts, batches interleaved across methods ----
    jobs = [(i, k) for i in range(len(chosen)) for k in range(images_per_prompt)]  # (prompt, image) pairs
    texts = [chosen[i].text for i, _ in jobs]
    seeds = [image_seed(seed, chosen[i].text, k) for i, k in jobs]
    batches = [slice(b, b + batch_size) for b in range(0, len(jobs), batch_size)]
    images = {name: [] for name in rows}
    verdicts = {name: [] for name in rows}
    seconds = dict.fromkeys(rows, 0.0)
    with tqdm(total=len(batches) * len(rows), desc="demo", unit="batch", disable=not progress) as bar:
        for batch in batches:
            for name, fn in rows.items():
                t0 = time.perf_counter()
                out = fn(texts[batch], seeds[batch])
                seconds[name] += time.perf_counter() - t0
                out = _check_images(name, out, len(texts[batch]))
                images[name].append(out)
                verdicts[name] += [check(image, text) for image, text in zip(out, texts[batch])]
                bar.update(1)
                bar.set_postfix(method=name)

    # ---- statistics ----
    groups = np.array([i for i, _ in jobs])
    cats = np.array([chosen[i].category for i, _ in jobs])
    splits = np.array([chosen[i].split for i, _ in jobs])
    split_names = list(dict.fromkeys(splits.tolist()))
    n_images = len(jobs)
    base_rate = seconds["base"] / n_images
    per_method = {}
    oks = {name: np.array([v.ok for v in verdicts[name]], dtype=bool) for name in rows}
    for name, ok in oks.items():
        per_method[name] = {
            "seconds": seconds[name],
            "seconds_per_image": seconds[name] / n_images,
            "time_ratio": (seconds[name] / n_images) / base_rate if base_rate > 0 else None,
            **_scores(ok, groups, cats, splits, categories, seed),
            "marginal": _marginal(verdicts[name], cats, categories),
            "images": [
                {"prompt": i, "image": k, "ok": bool(v.ok), "reason": v.reason, "marginal": bool(v.marginal)}
                for (i, k), v in zip(jobs, verdicts[name])
            ],
        }
    differences = _differences(oks, groups, cats, categories, seed)
    for name, found in differences.items():
        per_method[name]["difference_to_base"] = found

    # ---- extra tables (probing rows of later work) ----
    extra = [item if isinstance(item, Table) else item(pipe) for item in tables_in]
    for item, table in zip(tables_in, extra):
        if not isinstance(table, Table):
            raise ValueError(f"`extra_tables` function {item!r} returned {table!r}; return a bench.Table.")

    # ---- tables, report ----
    report_rows = []
    first = np.array([k == 0 for _, k in jobs])
    for name in rows:
        stacked = np.concatenate(images[name])  # (n_images, S, S, 3)
        for c in categories:
            stats = per_method[name]["categories"][c]
            shown = np.flatnonzero(first & (cats == c))[:GRID_IMAGES]
            report_rows.append(
                ReportRow(
                    name,
                    c,
                    stats["accuracy"],
                    stats["ci_low"],
                    stats["ci_high"],
                    stats["n_prompts"],
                    stats["n_images"],
                    images=stacked[shown],
                    captions=[f"{texts[j]} ({splits[j]})" for j in shown],
                    passed=[verdicts[name][j].ok for j in shown],
                    notes=[verdicts[name][j].reason for j in shown],
                )
            )
    main_table = accuracy_table(report_rows, "accuracy per category [95% CI over prompts]")
    split_table = _split_table(per_method, categories, split_names)
    timing_table = Table(
        "time per image",
        ["method", "images", "seconds", "s / image", "ratio to base"],
        [[name, n_images, m["seconds"], m["seconds_per_image"], m["time_ratio"]] for name, m in per_method.items()],
        note="wall time of the method's calls (generation only, not the oracle), batches interleaved across methods",
    )
    settings = {
        "seed": seed,
        "steps": steps,
        "guidance": float(guidance),
        "n_prompts": n_prompts,
        "images_per_prompt": images_per_prompt,
        "batch_size": batch_size,
        "quick": quick,
        "categories": list(categories),
        "image_size": int(image_size),
        "prompt_source": "user" if prompts is not None else "held-out",
        "device": str(device),
        "pipeline": str(getattr(pipe, "name_or_path", None) or type(pipe).__name__),
        "ci": "95% percentile bootstrap over prompts",
        "versions": _versions(),
    }
    results = {
        "settings": settings,
        "prompts": [
            {
                "text": p.text,
                "category": p.category,
                "split": p.split,
                "seeds": seeds[i * images_per_prompt : (i + 1) * images_per_prompt],
            }
            for i, p in enumerate(chosen)
        ],
        "methods": per_method,
        "tables": [t.to_dict() for t in extra],
    }
    shown_tables = [split_table, *([_difference_table(differences, categories)] if differences else [])]
    shown_tables += [_marginal_table(per_method, categories), timing_table]
    shown_tables += extra
    for table in (main_table, *shown_tables):
        print(table.format(), end="\n\n")
    results["seconds"] = time.perf_counter() - start_all
    paths = write_report(out_dir, results, report_rows, shown_tables, "discadapt demo: shapes world", settings)
    print(f"wrote {paths['results']} and {paths['report']} ({results['seconds']:.1f} s)")
    sys.stdout.flush()
    return results
