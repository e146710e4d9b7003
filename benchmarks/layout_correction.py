"""Issue 12, hypothesis 3: a layout term for self-correction. Spatial prompts ("A left of B") are where every
correction by the adapter's ITM score failed: the ITM score hardly sees relations (.30-.36 against hard negatives).
The pipeline's own noise prediction does: where a phrase changes it (`scoring.influence_layout`) tells the phrase's
side of the image on rendered scenes .875 / .730 / .585 of the time at t = 250 / 500 / 700 against the swapped
relation (`layout_probe.py`, 200 train-split scenes). The layout term moves the latent along the gradient of that
influence's share inside the phrase's planned half (`scorers.LayoutScorer`, `plan_layout`): the `layout` term of the
self-correcting pipelines, a second `SelfCorrection` in plain mode after the reference's own correction. Prompts
without a relation score 0 and are left as they are, bit for bit.

1. Sweep on *train-split* prompts (as `correction_modes.py`): base, the reference (with `--tuned`, the bundled tuned
   pipeline with the demo's correction, `rows.TUNED_CORRECTION` by its `tuned_adapter`; else the base pipeline
   uncorrected; `--tuned --uncorrected`: the tuned pipeline uncorrected), and the reference plus the layout term at
   each scale, window and `--every` (unit-normalised gradient; `--pairs-only`: one phrase's position, "the circle on
   the left", left alone). The best is chosen on the multi-object mean.
2. With `--held-out`: the demo's held-out prompts, base, the reference and the chosen setting, paired to base.

    python benchmarks/layout_correction.py --tuned --out runs/layout-correction --prompts-per-category 120 \\
        --scales 0.5 1 2 --windows 0-0.6 0.2-0.6

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
from discadapt.sampling import SelfCorrectingPipeline  # noqa: E402
from discadapt.worlds.shapes.bundle import load_pipeline  # noqa: E402
from discadapt.worlds.shapes.rows import GUIDANCE, TUNED_CORRECTION, bundled_tuned  # noqa: E402


def window(text: str) -> tuple[float, float]:
    start, stop = (float(v) for v in text.split("-"))
    return start, stop


def methods(base, reference, settings: dict) -> dict:
    """base, the reference (a self-correcting pipeline), and `name -> layout settings` as the reference plus the
    layout term."""
    out = {"base": pipeline_method(base, STEPS, GUIDANCE), "reference": pipeline_method(reference, STEPS, GUIDANCE)}
    for name, layout in settings.items():
        term = SelfCorrectingPipeline.from_pipe(reference, adapter=reference.adapter, layout=layout)
        out[name] = pipeline_method(term, STEPS, GUIDANCE)
    return out


def grid(args) -> dict:
    """`name -> layout settings` for every scale, window and `every`; unit-normalised gradient."""
    out = {}
    for scale in args.scales:
        for start, stop in args.windows:
            for every in args.every:
                name = f"layout {scale:g} {start:g}-{stop:g}" + (f" every {every}" if every > 1 else "")
                name += " pairs" if args.pairs_only else ""
                layout = {"scale": scale, "start": start, "stop": stop, "every": every, "normalize": "unit"}
                out[name] = {**layout, **({"positions": False} if args.pairs_only else {})}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--windows", type=window, nargs="+", default=[(0.0, 0.6)], help="START-STOP fractions")
    parser.add_argument(
        "--every", type=int, nargs="+", default=[1], help="apply the term every N-th step of its window"
    )
    parser.add_argument("--pairs-only", action="store_true", help="leave one phrase's position alone ('A on the left')")
    parser.add_argument("--tuned", action="store_true", help="the reference is the tuned pipeline with its correction")
    parser.add_argument("--uncorrected", action="store_true", help="with --tuned: the reference without its correction")
    add_arguments(parser, prompts_per_category=40)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = Path(args.out)
    base = load_pipeline()
    base.set_progress_bar_config(disable=True)
    reference = SelfCorrectingPipeline.from_pipe(base)  # uncorrected
    if args.tuned:
        tuned, adapter = bundled_tuned()
        tuned.set_progress_bar_config(disable=True)
        correction = {**TUNED_CORRECTION, "mode": "reuse"}
        adapter = None if args.uncorrected else adapter
        reference = SelfCorrectingPipeline.from_pipe(tuned, adapter=adapter, correction=correction)
    settings = grid(args)
    train = run_suite(train_suite(args), methods(base, reference, settings), out / "train", batch_size=48,
                      progress=False)  # fmt: skip
    scores = {name: multi_mean(found) for name, found in train["methods"].items()}
    best = max(settings, key=lambda n: scores[n])
    summary = {"train_multi_mean": scores, "chosen": [best, settings[best]]}
    print(json.dumps(summary, indent=1))
    if args.held_out:
        found = run_suite(held_out_suite(args), methods(base, reference, {best: settings[best]}),
                          out / "held-out", progress=False)  # fmt: skip
        summary["held_out"] = held_out_summary(found)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
