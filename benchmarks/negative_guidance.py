"""Issue 12: self-correction by the model's own discriminative score (`sampling.contrast.HardNegativeGuidance`), on
ShapeWorld: each step's guided prediction gains w (eps_c - eps_n), n one of the prompt's hard negatives
(`worlds.shapes.prompt_negatives`), at one more conditional UNet pass per corrected step.

1. Sweep on *train-split* prompts (`augment_shapes.train_prompts`, none of them a demo prompt): base, then each
   scale w in each window, the oracle's accuracy per multi-object category; beside them the base pipeline at a
   higher classifier-free guidance (`--guidance-controls`), since w (eps_c - eps_n) also strengthens the prompt's
   direction. The best setting is chosen on the multi-object mean.
2. With `--held-out`: the demo's held-out prompts (multi-object categories, 40 prompts x 5 images), base and the
   chosen setting, paired differences to base with 95% intervals, time per image.

`--tuned` runs both on the bundled tuned pipeline (stage-2 LoRA fused) instead, with the tuned model as base.

    python benchmarks/negative_guidance.py --out runs/negative-guidance --scales 1 2 4 --windows 0:0.6 0:1 --held-out

`--kinds` picks the negatives (`prompt_negatives` kinds, comma-separated sets; default the category's hard-negative
kinds), e.g. `--kinds drop_phrase drop_phrase,swap_relation,wrong_count`.

Resumable (each stage is a `bench.run_suite` folder). Writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from _protocol import STEPS, add_arguments, held_out_suite, held_out_summary, multi_mean, train_suite  # noqa: E402

from discadapt.bench import pipeline_method, run_suite  # noqa: E402
from discadapt.bench.methods import hard_negative_method  # noqa: E402
from discadapt.worlds.shapes import prompt_negatives  # noqa: E402
from discadapt.worlds.shapes.bundle import load_pipeline  # noqa: E402
from discadapt.worlds.shapes.rows import GUIDANCE, bundled_tuned  # noqa: E402


def negatives_of(kinds: tuple[str, ...] | None):
    """prompt -> its negatives' texts of `kinds` (None: the category's hard-negative kinds)."""
    return lambda prompt: [n.caption.text for n in prompt_negatives(prompt, kinds=kinds)]


def kind_set(text: str) -> tuple[str, ...] | None:
    return None if text == "hard" else tuple(text.split(","))


def window(text: str) -> tuple[float, float]:
    start, stop = text.split(":")
    return float(start), float(stop)


def methods(pipe, settings: dict[str, tuple], guidances=()) -> dict:
    """base, base at each guidance of `guidances`, then `name -> (scale, window, kinds)` under hard-negative
    guidance."""
    out = {"base": pipeline_method(pipe, STEPS, GUIDANCE)}
    out.update({f"guidance {g:g}": pipeline_method(pipe, STEPS, g) for g in guidances})
    for name, (scale, (start, stop), kinds) in settings.items():
        negatives = negatives_of(kinds)
        out[name] = hard_negative_method(pipe, negatives, STEPS, GUIDANCE, scale=scale, start=start, stop=stop)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--windows", type=window, nargs="+", default=[(0.0, 0.6), (0.0, 1.0)], help="START:STOP")
    parser.add_argument(
        "--kinds", type=kind_set, nargs="+", default=[None],
        help="sets of negative kinds, each comma-separated (e.g. drop_phrase,wrong_count); 'hard': the category's",
    )  # fmt: skip
    parser.add_argument("--guidance-controls", type=float, nargs="*", default=[], help="base at these guidances")
    parser.add_argument("--tuned", action="store_true", help="the bundled tuned pipeline (LoRA fused) as base")
    add_arguments(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = Path(args.out)
    pipe = bundled_tuned()[0] if args.tuned else load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # 1. the sweep on train-split prompts
    suite = train_suite(args)
    grid = {
        f"w {s:g} in [{a:g}, {b:g})" + (f" {'+'.join(kinds)}" if kinds else ""): (s, (a, b), kinds)
        for kinds in args.kinds for s in args.scales for a, b in args.windows
    }  # fmt: skip
    train = run_suite(suite, methods(pipe, grid, args.guidance_controls), out / "train", batch_size=48, progress=False)
    found = train["methods"]
    scores = {name: multi_mean(m) for name, m in found.items()}
    best = max(grid, key=lambda n: scores[n])
    summary = {
        "tuned": args.tuned,
        "train_multi_mean": scores,
        "train_difference_to_base": {n: m.get("difference_to_base", {}).get("all") for n, m in found.items()},
        "train_time_ratio": {n: m["time_ratio"] for n, m in found.items()},
        "chosen": best,
    }
    print(json.dumps(summary, indent=1))
    # 2. the chosen setting on the demo's held-out prompts
    if args.held_out:
        held = held_out_suite(args)
        found = run_suite(held, methods(pipe, {best: grid[best]}), out / "held-out", progress=False)
        summary["held_out"] = held_out_summary(found)
        print(json.dumps(summary["held_out"], indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
