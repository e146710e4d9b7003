"""Issue 12, hypothesis 0: the authors' form of self-correction (`mode="input"`: the conditional UNet input is
corrected, the latent is not) against ours (`"plain"`: the latent moves; `"reuse"`: the same, cheaper), on ShapeWorld.

1. Sweep on *train-split* prompts (`augment_shapes.train_prompts`, none of them a demo prompt): base, then each mode
   at each scale (unit-normalised gradient, first 60% of the schedule, the stage-1 adapter, as the demo rows), the
   oracle's accuracy per multi-object category. The best scale of each mode is chosen here, on the multi-object mean.
   `--start/--stop` move the window (hypothesis 1: the adapter was trained on t < 500, the second half of the
   schedule, while the demo corrects the first 60%); `--adapter DIR` corrects with another adapter (hypothesis 2: a
   longer-trained one from `probe_curve.py`); `--every 2` corrects every second step of the window (half the extra
   cost); `--tuned` corrects the bundled tuned pipeline (stage-2 LoRA fused)
   with its `tuned_adapter`, beside it uncorrected (`uncorrected`), the base row still the untuned pipeline.
2. With `--held-out`: the demo's held-out prompts (multi-object categories, 40 prompts x 5 images), base and each
   mode at its chosen scale, paired differences to base with 95% intervals, time per image.

    python benchmarks/correction_modes.py --out runs/correction-modes [--held-out]

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

from discadapt.adapter import DiscriminativeAdapter  # noqa: E402
from discadapt.bench import pipeline_method, run_suite  # noqa: E402
from discadapt.sampling import SelfCorrectingPipeline  # noqa: E402
from discadapt.worlds.shapes.bundle import load_pipeline  # noqa: E402
from discadapt.worlds.shapes.rows import CORRECTION, GUIDANCE, bundled_adapter, bundled_tuned  # noqa: E402


def methods(
    pipe, adapter, settings: dict[str, tuple[str, float]], window: tuple[float, float], base=None, every: int = 1
) -> dict:
    """base, then `name -> (mode, scale)` as self-correcting pipelines sharing `pipe`'s weights, correcting in
    `window` (fractions of the schedule), every `every`-th step of it. With `base` (another pipeline), it is the
    base row and `pipe` the `uncorrected` row."""
    out = {"base": pipeline_method(pipe if base is None else base, STEPS, GUIDANCE)}
    if base is not None:
        out["uncorrected"] = pipeline_method(pipe, STEPS, GUIDANCE)
    for name, (mode, scale) in settings.items():
        correction = {**CORRECTION, "scale": scale, "mode": mode, "start": window[0], "stop": window[1], "every": every}
        fixed = SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction=correction)
        out[name] = pipeline_method(fixed, STEPS, GUIDANCE)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--modes", nargs="+", default=["plain", "input"])
    parser.add_argument("--start", type=float, default=0.0, help="correction window start (fraction of the schedule)")
    parser.add_argument("--stop", type=float, default=CORRECTION["stop"], help="window stop (default the demo's 0.6)")
    parser.add_argument("--every", type=int, default=1, help="correct every N-th step of the window (default 1)")
    parser.add_argument("--adapter", help="a saved adapter folder (default: the bundled stage-1 adapter)")
    parser.add_argument(
        "--tuned", action="store_true",
        help="correct the bundled tuned pipeline with its tuned_adapter (--adapter overrides); base stays untuned",
    )  # fmt: skip
    add_arguments(parser, prompts_per_category=12)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = Path(args.out)
    base = load_pipeline()
    base.set_progress_bar_config(disable=True)
    pipe, adapter = bundled_tuned() if args.tuned else (base, bundled_adapter())
    adapter = DiscriminativeAdapter.from_pretrained(args.adapter) if args.adapter else adapter
    pipe.set_progress_bar_config(disable=True)
    base = base if args.tuned else None
    # 1. the sweep on train-split prompts
    suite = train_suite(args)
    grid = {f"{mode} {scale:g}": (mode, scale) for mode in args.modes for scale in args.scales}
    window = (args.start, args.stop)
    train = run_suite(
        suite, methods(pipe, adapter, grid, window, base, args.every), out / "train", batch_size=48, progress=False
    )
    scores = {name: multi_mean(found) for name, found in train["methods"].items()}
    chosen = {}
    for mode in args.modes:
        best = max((n for n in grid if grid[n][0] == mode), key=lambda n: scores[n])
        chosen[f"{mode} (chosen: {grid[best][1]:g})"] = grid[best]
    summary = {
        "window": [args.start, args.stop],
        "every": args.every,
        "train_multi_mean": scores,
        "chosen": {k: list(v) for k, v in chosen.items()},
    }
    print(json.dumps(summary, indent=1))
    # 2. the chosen settings on the demo's held-out prompts
    if args.held_out:
        held = held_out_suite(args)
        found = run_suite(
            held, methods(pipe, adapter, chosen, window, base, args.every), out / "held-out", progress=False
        )
        summary["held_out"] = held_out_summary(found)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
