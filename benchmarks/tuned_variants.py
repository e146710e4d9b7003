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
from discadapt.worlds.shapes.bundle import load_pipeline  # noqa: E402
from discadapt.worlds.shapes.probing import hard_negative_table  # noqa: E402
from discadapt.worlds.shapes.rows import GUIDANCE, SCORE_BATCH, bundled_tuned  # noqa: E402


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


def variant_name(spec: str) -> str:
    """The row name of a variant: each LoRA's run folder name (or `lane/lora-K` for a LoRA folder of
    `tune_sweep.py`), with its scale and `+` as given."""
    name = lambda run: f"{run.parent.name}/{run.name}" if is_lora(run) else run.name  # noqa: E731
    return "+".join(name(run) + (f"@{scale:g}" if "@" in part else "")
                    for (run, scale), part in zip(parts(spec), str(spec).split("+")))  # fmt: skip


def tuned_pipeline(spec: str):
    """The world pipeline with the LoRAs of variant `spec` fused into its UNet (see `parts`; a finished tune run
    stands for its `lora/`); `bundled`: the bundled stage-2 LoRA (the demo's tuned row), `bundled+A...`: with more
    LoRAs fused on top (e.g. an enhancement of the tuned model)."""
    first, _, more = str(spec).partition("+")
    if first == "bundled":
        pipe, loras = bundled_tuned()[0], parts(more) if more else []
    else:
        pipe, loras = load_pipeline(), parts(spec)
    if loras:
        fuse_enhancements(pipe, [lora_folder(run) for run, _ in loras], scales=[scale for _, scale in loras])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipelines(runs: dict[str, str]) -> dict:
    """base, then `name -> tuned pipeline` for each run."""
    base = load_pipeline()
    base.set_progress_bar_config(disable=True)
    return {"base": base, **{name: tuned_pipeline(run) for name, run in runs.items()}}


def methods(pipes: dict) -> dict:
    return {name: pipeline_method(pipe, STEPS, GUIDANCE) for name, pipe in pipes.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--runs",
        nargs="+",
        required=True,
        help="finished `discadapt tune --world` run folders, LoRA folders (tune_sweep.py's LANE/lora-K), or `bundled`; "
        "A@S merges A at scale S, A+B merges both (A@0.5+B@0.5: the mean of their updates)",
    )
    parser.add_argument("--probing", type=int, default=0, help="held-out scenes per category and split (0: off)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = Path(args.out)
    runs = {variant_name(r): r for r in args.runs}
    if len(runs) != len(args.runs):
        parser.error(f"--runs {' '.join(args.runs)}: two runs share a name; give each its own folder name.")
    pipes = pipelines(runs)
    # 1. the variants on train-split prompts
    suite = train_suite(args)
    train = run_suite(suite, methods(pipes), out / "train", batch_size=48, progress=False)
    scores = {name: multi_mean(found) for name, found in train["methods"].items()}
    chosen = [name for name in runs if scores[name] == max(scores[n] for n in runs)]
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
        held_methods = methods({"base": pipes["base"], **{name: pipes[name] for name in chosen}})
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
