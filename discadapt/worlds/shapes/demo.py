"""`discadapt demo`: how well a text-to-image pipeline of the shapes world draws held-out prompts, judged by the
oracle, for the base pipeline and any further methods, with bootstrap confidence intervals and a report.

`run_demo(pipe, out_dir)` checks its arguments, loads the pipeline, assembles the world's suite (`suite.py`: the
held-out prompts or the user's, their seeds, the oracle as judge) and the methods (the base pipeline first,
`bench.pipeline_method(pipe, steps, guidance)`, then each entry of `methods`), and hands them to the one evaluation
runner, `bench.run_suite`, which runs the batches interleaved across methods (resumable in `out_dir`), judges every
image, computes the intervals and the differences to the base row, prints the tables and writes results.json and
report.html.

Extension points: `methods`, further rows, each a function `(prompts, seeds) -> (N, S, S, 3)` uint8 images (e.g.
self-correction, `rows.py`); `extra_tables`, results that are not images of a method (e.g. image-text matching
against hard negatives): a `bench.Table`, or a function `pipe -> Table` run after the images.

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

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ...bench import BATCH_SIZE, GRID_IMAGES, Method, Table, pipeline_method, run_suite
from ...sampling.checks import check_guidance
from ...sampling.seeds import image_seed
from .suite import DemoPrompt, check_categories, check_count, demo_prompts, shapes_suite, user_prompts

__all__ = [
    "BATCH_SIZE",
    "FULL",
    "GRID_IMAGES",
    "GUIDANCE",
    "QUICK",
    "DemoPrompt",
    "Method",
    "demo_prompts",
    "image_seed",
    "pipeline_method",
    "run_demo",
    "weights_fingerprint",
]

# Measured with the full-size world (ModelSizes(), 32 px, 25 DDIM steps, guidance 4, batch 50) on 2 CPU cores, nice'd,
# beside a training job using one core: 55-100 ms per image (varies with the load), ~0.7 ms per oracle check. Full
# demo, base row only: 84 s of generation, 95 s in all with loading; quick: 8 s of generation, 18 s in all.
FULL = {"n_prompts": 40, "images_per_prompt": 5, "steps": 25}  # 181 prompts, 905 images: ~1.5 minutes a row
QUICK = {"n_prompts": 8, "images_per_prompt": 2, "steps": 25}  # 40 prompts, 80 images: ~8 seconds a row
GUIDANCE = 4.0  # classifier-free guidance of `evaluate_world`


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


def _check_tables(extra_tables) -> list:
    tables = list(extra_tables)
    for item in tables:
        if not isinstance(item, Table) and not callable(item):
            raise ValueError(f"`extra_tables` holds {item!r}; pass bench.Table objects or functions pipe -> Table.")
    return tables


def _table_of(item: Callable, pipe) -> Callable[[], Table]:
    """`item(pipe)` as a function of no arguments (the runner's tables), checked."""

    def compute() -> Table:
        table = item(pipe)
        if not isinstance(table, Table):
            raise ValueError(f"`extra_tables` function {item!r} returned {table!r}; return a bench.Table.")
        return table

    return compute


def _load(pipe, device: str):
    """The pipeline: the bundled world (None), a local folder (offline), or `pipe` itself, on `device`."""
    if pipe is None:
        from .bundle import load_pipeline

        pipe = load_pipeline(device=device)
    elif isinstance(pipe, (str, os.PathLike)):
        from ...loading import load_pipeline

        pipe = load_pipeline(pipe, "pipe").to(device)
    else:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weights_fingerprint(folder=None) -> str:
    """Short hash of a folder's files (relative names, sizes, modification times; default: the bundled weights), to
    tell a resumed run that its weights are the same."""
    if folder is None:
        from .bundle import WEIGHTS_DIR

        folder = WEIGHTS_DIR
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _weights(pipe) -> str | None:
    """What identifies the pipeline's weights: a fingerprint of the bundled weights (None) or of the folder."""
    if pipe is None:
        return f"bundle {weights_fingerprint()}"
    if isinstance(pipe, (str, os.PathLike)):
        return f"folder {weights_fingerprint(pipe)}"
    return None


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
    resume: bool = True,
    weights: str | None = None,
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
        guidance (float): classifier-free guidance scale of the base row, finite and >= 0. Default `GUIDANCE` (4.0).
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
        resume (bool): continue an interrupted demo of the same settings in `out_dir` (refusing other settings);
            False discards an earlier run there. Default True.
        weights (str | None): what identifies the weights of the pipeline and the methods, stored in the settings
            (a resumed run must match it); None: a fingerprint of the bundle (`pipe` None) or of the folder `pipe`
            names (`weights_fingerprint`). Default None.

    Returns:
        dict: the content of results.json (`bench.run_suite`): "settings" (seed, steps, guidance, n_prompts,
        images_per_prompt, batch_size, quick, categories, image_size, prompt_source ("held-out" or "user"), device,
        pipeline, weights, suite, judge, ci, versions), "prompts", "methods" (per row: seconds, time ratio to base,
        accuracy per category, per split and overall with intervals, marginal fractions, per-image verdicts,
        difference to base), "tables", "seconds".

    Raises:
        ValueError: a bad argument (naming it), an unparsable or empty prompt list, a method returning images of
            the wrong type or shape, `out_dir` a file or holding a demo of other settings.
        NonFiniteImageError: a row's images hold NaN or infinite values (`sampling.checks`); nothing of their batch
            is saved.
        FileNotFoundError: `pipe` is None and the bundled weights are missing.

    Example:
        >>> results = run_demo(pipe, "demo-out", quick=True, categories=["single", "spatial"])  # doctest: +SKIP
    """
    # 1. check every argument before any work
    started = time.perf_counter()
    if isinstance(pipe, (str, os.PathLike)) and not os.path.isdir(pipe):
        raise ValueError(
            f"`pipe` is {str(pipe)!r}, not a folder; pass a diffusers pipeline folder (e.g. train_world's "
            "out_dir/pipeline), a pipeline, or None for the bundled world."
        )
    if not isinstance(quick, bool):
        raise ValueError(f"`quick` is {quick!r}; pass True or False.")
    preset = QUICK if quick else FULL
    images_per_prompt = check_count(
        "images_per_prompt", preset["images_per_prompt"] if images_per_prompt is None else images_per_prompt
    )
    steps = check_count("steps", preset["steps"] if steps is None else steps)
    seed = check_count("seed", seed, minimum=0)
    batch_size = check_count("batch_size", batch_size)
    guidance = check_guidance(guidance)
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"`out_dir` is {str(out_dir)!r}, which is a file; pass a folder (it is created).")
    methods, tables = _check_methods(methods), _check_tables(extra_tables)
    if prompts is not None:
        if categories is not None or n_prompts is not None:
            raise ValueError(
                "`prompts` was given with `categories` or `n_prompts`; these choose drawn prompts, so pass either "
                "`prompts` alone or no `prompts`."
            )
        categories = list(dict.fromkeys(p.category for p in user_prompts(prompts)))
    else:
        categories = check_categories(categories)
        n_prompts = check_count("n_prompts", preset["n_prompts"] if n_prompts is None else n_prompts)

    # 2. pipeline, suite, rows
    weights = _weights(pipe) if weights is None else str(weights)
    pipe = _load(pipe, device)
    image_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    suite = shapes_suite(categories, n_prompts or 1, images_per_prompt, seed, image_size, prompts)
    rows: dict[str, Method] = {"base": pipeline_method(pipe, steps, guidance), **methods}
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
        "weights": weights,
    }

    # 3. the runner: images, verdicts, statistics, tables, results.json and report.html
    return run_suite(
        suite,
        rows,
        out_dir,
        batch_size=batch_size,
        tables=[item if isinstance(item, Table) else _table_of(item, pipe) for item in tables],
        settings=settings,
        title="discadapt demo: shapes world",
        resume=resume,
        progress=progress,
        started=started,
    )
