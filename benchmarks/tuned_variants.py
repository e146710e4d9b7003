"""Issue 12, hypothesis 5: stage-2 variants (LoRAs of `discadapt tune --world` runs), chosen on train-split prompts.

1. Base and each variant's LoRA (fused, so each costs what the base pipeline does) on *train-split* prompts
   (`augment_shapes.train_prompts`, none of them a demo prompt), the oracle's accuracy per multi-object category;
   the variant with the best multi-object mean is chosen here (every variant tied for it, when several are).
2. With `--probing N`: what tuning did to the model's own discrimination, the denoising error's (10 t) hard-negative
   accuracy per category on N rendered held-out scenes per category and split, for base and each variant.
3. With `--held-out`: base and the chosen variants on the demo's held-out prompts (multi-object categories, 40 prompts
   x 5 images), paired differences to base with 95% intervals, time per image.

    python benchmarks/tuned_variants.py --out runs/tuned-variants --runs runs/tune-a runs/tune-b \
        [--probing 40] [--held-out]

A variant may merge several LoRAs at scales: `runs/tune-a@1.5` (the update extrapolated), `runs/tune-a@0.5+runs/
tune-b@0.5` (the mean of two runs' updates, a soup).

Where in the schedule an update acts: `bundled~0.3-1` samples with the tuned UNet in the steps of [0.3, 1) of the
schedule and base's before (the UNets swapped between steps: one UNet pass a step, as base's); segments join windows,
`bundled~0-0.3,bundled@1.5~0.3-1` (the bundled update at 1.5 times after the first 30% of the steps).

`--guidance 4 3 5`: each pipeline, base too, at each classifier-free guidance scale (rows `NAME g=3`, ...), so that a
tuned model's own best scale is chosen beside base's; the held-out base row stays at the demo's scale (4).

Resumable (each stage is a `bench.run_suite` folder). Writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from _protocol import MULTI, STEPS, add_arguments, held_out_suite, multi_mean, train_suite  # noqa: E402

from discadapt.bench import pipeline_method, run_suite  # noqa: E402
from discadapt.interaction import fuse_enhancements  # noqa: E402
from discadapt.scorers import DenoisingScorer  # noqa: E402
from discadapt.worlds.shapes.bundle import load_lora, load_pipeline  # noqa: E402
from discadapt.worlds.shapes.probing import hard_negative_table  # noqa: E402
from discadapt.worlds.shapes.rows import GUIDANCE, SCORE_BATCH  # noqa: E402


def is_lora(folder: Path) -> bool:
    """A LoRA folder in diffusers' format (`OUT/LANE/lora-K` of `tune_sweep.py`, a run's `lora/`)."""
    return (folder / "pytorch_lora_weights.safetensors").is_file()


def lora_folder(run: Path) -> Path:
    """The LoRA folder of a finished tune run, or `run` itself when it is one."""
    if not (is_lora(run) or (run / "lora").is_dir()):
        raise FileNotFoundError(
            f"{run / 'lora'} is missing: pass the folder of a finished `discadapt tune` run, or a LoRA folder."
        )
    return run if is_lora(run) else run / "lora"


def parts(spec: str) -> list[tuple[Path, float]]:
    """`(folder, scale)` of each LoRA of a variant `A[@s][+B[@s]...]`: LoRAs merged at their scale (default 1), e.g.
    `runs/x@1.5` (one LoRA, extrapolated) or `runs/x@0.5+runs/y@0.5` (the mean of two updates)."""
    found = []
    for part in str(spec).split("+"):
        folder, _, scale = part.partition("@")
        found.append((Path(folder), float(scale) if scale else 1.0))
    return found


def window(spec: str) -> tuple[str, tuple[float, float] | None]:
    """A segment's LoRAs and its window: `SPEC~A-B` uses that tuned UNet for the sampler steps i with A <= i / steps
    < B (e.g. `bundled~0.3-1`); no `~`: the tuned UNet throughout."""
    loras, _, found = str(spec).partition("~")
    if not found:
        return loras, None
    start, _, stop = found.partition("-")
    if not (0 <= float(start) < float(stop) <= 1):
        raise ValueError(f"The window of {spec!r} is {found!r}; pass A-B with 0 <= A < B <= 1, e.g. ~0-0.6.")
    return loras, (float(start), float(stop))


def segments(spec: str) -> list[tuple[str, tuple[float, float] | None]]:
    """A variant's segments, `SEG[,SEG...]`, each `window`'s: `bundled~0-0.6` is the tuned UNet in the first 60% of
    the steps and base's after; `bundled~0-0.3,bundled@1.5~0.3-0.6,bundled~0.6-1` the update at 1.5 times in the
    middle. Steps no window holds use base's UNet; a window overlapping an earlier one yields to it."""
    found = [window(part) for part in str(spec).split(",")]
    if len(found) > 1 and any(w is None for _, w in found):
        raise ValueError(f"{spec!r} joins segments without a window; give each a ~A-B, e.g. A~0-0.5,B~0.5-1.")
    return found


def variant_name(spec: str) -> str:
    """The row name of a variant: each LoRA's run folder name (or `lane/lora-K` for a LoRA folder of
    `tune_sweep.py`), with its scale and `+` as given, and each segment's window."""
    name = lambda run: f"{run.parent.name}/{run.name}" if is_lora(run) else run.name  # noqa: E731

    def named(loras, found):
        runs = "+".join(name(run) + (f"@{scale:g}" if "@" in part else "")
                        for (run, scale), part in zip(parts(loras), loras.split("+")))  # fmt: skip
        return runs + (f"~{found[0]:g}-{found[1]:g}" if found else "")

    return ",".join(named(loras, found) for loras, found in segments(spec))


def tuned_pipeline(spec: str):
    """The world pipeline with the LoRAs of variant `spec` fused into its UNet (see `parts`; a finished tune run
    stands for its `lora/`); `bundled`: the bundled stage-2 LoRA with the LoRAs stacked on it (the demo's tuned row),
    `bundled-unstacked` without them, `bundled+A...`: with more LoRAs fused on top (e.g. an enhancement of the tuned
    model), `bundled@S` the bundled update at S times. For a variant of several segments, the first segment's; a
    window (`~A-B`) is ignored here (see `unet_schedules`)."""
    loras = parts(segments(spec)[0][0])
    if loras[0][0] in (Path("bundled"), Path("bundled-unstacked")):  # at its scale (the demo's tuned model at 1)
        stack = loras[0][0] == Path("bundled")
        pipe, loras = load_lora(load_pipeline(), scale=loras[0][1], stack=stack), loras[1:]
    else:
        pipe = load_pipeline()
    if loras:
        fuse_enhancements(pipe, [lora_folder(run) for run, _ in loras], scales=[scale for _, scale in loras])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipelines(runs: dict[str, str]) -> dict:
    """base, then `name -> tuned pipeline` for each run."""
    base = load_pipeline()
    base.set_progress_bar_config(disable=True)
    return {"base": base, **{name: tuned_pipeline(run) for name, run in runs.items()}}


def rows(pipes: dict, guidances=(GUIDANCE,)) -> dict:
    """`row name -> (variant name, guidance)`: each pipeline at each guidance scale, named as the pipeline at the
    demo's `GUIDANCE` and `NAME g=G` at another scale (so that `base` stays the base row every row is paired to)."""
    return {name if g == GUIDANCE else f"{name} g={g:g}": (name, g) for name in pipes for g in guidances}


def unet_schedules(runs: dict, pipes: dict) -> dict:
    """`variant name -> [(A, B, unet), ...]` for the variants with windows: each segment's fused UNet (the first
    segment's is the variant's pipeline's) and the share of the schedule [A, B) it runs in."""
    found = {}
    for name, spec in runs.items():
        found_segments = segments(spec)
        if found_segments[0][1] is not None:
            unets = [pipes[name].unet] + [tuned_pipeline(loras).unet for loras, _ in found_segments[1:]]
            found[name] = [(*w, unet) for (_, w), unet in zip(found_segments, unets)]
    return found


def windowed_method(pipe, base_unet, schedule: list, guidance: float):
    """`pipe`'s method with the UNet of `schedule` (`[(A, B, unet), ...]`, the first that holds the step) in each
    step i with A <= i / steps < B, and `base_unet` in the others; swapped between steps by `callback_on_step_end`,
    so each step costs one UNet pass, as base's."""
    home = pipe.unet
    unet_at = lambda i: next((u for a, b, u in schedule if a <= i / STEPS < b), base_unet)  # noqa: E731

    def swap(pipeline, i, t, tensors):
        pipeline.unet = unet_at(i + 1)
        return tensors

    inner = pipeline_method(pipe, STEPS, guidance, callback_on_step_end=swap)

    def generate(prompts, seeds):
        pipe.unet = unet_at(0)
        try:
            return inner(prompts, seeds)
        finally:
            pipe.unet = home

    return generate


def methods(rows: dict, pipes: dict, schedules: dict | None = None) -> dict:
    """Each row's method (`rows`: row name -> (variant name, guidance), `pipes`: variant name -> pipeline, base's
    under "base"); a variant with windows (`schedules`, see `unet_schedules`) swaps UNets between steps, base's
    outside its windows."""
    schedules = schedules or {}
    return {
        name: windowed_method(pipes[variant], pipes["base"].unet, schedules[variant], g)
        if variant in schedules
        else pipeline_method(pipes[variant], STEPS, g)
        for name, (variant, g) in rows.items()
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--runs",
        nargs="+",
        required=True,
        help="finished `discadapt tune --world` run folders, LoRA folders (tune_sweep.py's LANE/lora-K), `bundled` "
        "(the demo's tuned model) or `bundled-unstacked` (without the LoRAs stacked on its stage-2 LoRA); "
        "A@S merges A at scale S, A+B merges both (A@0.5+B@0.5: the mean of their updates); SPEC~A-B: that tuned "
        "UNet in the steps [A, B) of the schedule only, base's elsewhere; SEG,SEG: several windows",
    )
    parser.add_argument("--probing", type=int, default=0, help="held-out scenes per category and split (0: off)")
    parser.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[GUIDANCE],
        help=f"classifier-free guidance scales, each pipeline (base too) at each (default {GUIDANCE:g}, the demo's); "
        "the held-out base row is always at the demo's",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = Path(args.out)
    runs = {variant_name(r): r for r in args.runs}
    if len(runs) != len(args.runs):
        parser.error(f"--runs {' '.join(args.runs)}: two runs share a name; give each its own folder name.")
    pipes = pipelines(runs)
    schedules = unet_schedules(runs, pipes)
    grid = rows(pipes, dict.fromkeys([GUIDANCE, *args.guidance]))  # the demo's base row first, as the baseline
    tuned = [name for name, (variant, _) in grid.items() if variant != "base"]
    # 1. the variants on train-split prompts
    suite = train_suite(args)
    train = run_suite(suite, methods(grid, pipes, schedules), out / "train", batch_size=48, progress=False)
    scores = {name: multi_mean(found) for name, found in train["methods"].items()}
    chosen = [name for name in tuned if scores[name] == max(scores[n] for n in tuned)]
    summary = {
        "train_multi_mean": scores,
        "train_difference_to_base": {
            name: found.get("difference_to_base", {}).get("all") for name, found in train["methods"].items()
        },
        "chosen": chosen,
    }
    print(json.dumps(summary, indent=1))
    # 2. the model's own discrimination, base and tuned
    if args.probing:
        scorers = {name: DenoisingScorer(pipe, 10, batch_size=SCORE_BATCH) for name, pipe in pipes.items()}
        table = hard_negative_table(scorers, n=args.probing)
        print(table.format())
        summary["probing"] = {"columns": table.columns, "rows": table.rows}
    # 3. the chosen variants on the demo's held-out prompts
    if args.held_out:
        held = held_out_suite(args)
        held_methods = methods({name: grid[name] for name in ["base", *chosen]}, pipes, schedules)
        found = run_suite(held, held_methods, out / "held-out", progress=False)
        summary["held_out"] = {
            name: {
                "multi_mean": multi_mean(m),
                "categories": {c: m["categories"][c]["accuracy"] for c in MULTI},
                "difference_to_base": m.get("difference_to_base", {}),
                "time_ratio": m["time_ratio"],
            }
            for name, m in found["methods"].items()
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
