"""Does the pipeline's own denoising see spatial relations once asked where? Hard-negative matching on rendered
held-out ShapeWorld scenes (the demo's probing table, spatial category) for the locating score
(`scoring.layout_score` on the layout planned from each caption, `LocatingCritic`) beside the relative denoising
error of the whole caption (DiffusionITM). Right when the true caption outscores every hard negative.

    python benchmarks/locate_probe.py [--n 100] [--timesteps 10]

Only captions with a spatial relation have a layout, so only the spatial category means anything here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="examples per held-out split")
    p.add_argument("--timesteps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    set_threads(args.threads)
    from discadapt.interaction.critics import LocatingCritic
    from discadapt.scorers import DenoisingScorer
    from discadapt.worlds.shapes import load_pipeline
    from discadapt.worlds.shapes.probing import hard_negative_table

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    scorers = {
        f"locating ({args.timesteps} t)": LocatingCritic(pipe, num_timesteps=args.timesteps, batch_size=256),
        f"relative denoising error ({args.timesteps} t)": DenoisingScorer(pipe, args.timesteps, True, 256),
    }
    print(hard_negative_table(scorers, n=args.n, categories=["spatial"]).format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
