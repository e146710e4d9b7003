"""Issue 12: what stage-2 LoRAs do to the model's fit of its training data. The world pipeline's denoising error
(DiffusionITM's, 10 timesteps) on rendered *train-split* scenes under their captions (the conditional branch) and
under the empty caption (the unconditional branch classifier-free guidance extrapolates from), for base and each
variant (`tuned_variants.py`'s `--runs` syntax), with the change relative to base.

    python benchmarks/denoising_fit.py --runs runs/tune-sweep/c-s1/lora-2000 runs/tune-sweep/d-s1/lora-2000 \
        [--scenes 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from tuned_variants import tuned_pipeline, variant_name  # noqa: E402

from discadapt.scorers import DenoisingScorer  # noqa: E402
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems  # noqa: E402
from discadapt.worlds.shapes.bundle import load_pipeline  # noqa: E402
from discadapt.worlds.shapes.rows import SCORE_BATCH  # noqa: E402


def fit(pipe, images: list, captions: list[str]) -> dict[str, float]:
    """Mean denoising error of `images` under their `captions` ("conditional") and under "" ("unconditional")."""
    scorer = DenoisingScorer(pipe, 10, batch_size=SCORE_BATCH)
    return {
        "conditional": -scorer.score(images, captions).mean().item(),
        "unconditional": -scorer.score(images, [""] * len(images)).mean().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="variants, as `tuned_variants.py --runs` takes them")
    parser.add_argument("--scenes", type=int, default=256, help="train-split scenes, all categories (default 256)")
    parser.add_argument("--seed", type=int, default=123, help="the scenes' seed (default 123, not a training seed)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    items = ShapeWorldItems(args.scenes, split="train", seed=args.seed, negative_images=False)
    examples = [items[i] for i in range(len(items))]
    images, captions = [e["image"] for e in examples], [e["caption"] for e in examples]
    rows = {"base": fit(load_pipeline(), images, captions)}
    for spec in args.runs:
        rows[variant_name(spec)] = fit(tuned_pipeline(spec), images, captions)
    print(f"{'variant':<60}{'conditional':>20}{'unconditional':>20}")
    for name, row in rows.items():
        cells = [f"{row[k]:.5f} ({row[k] / rows['base'][k] - 1:+.0%})" for k in ("conditional", "unconditional")]
        print(f"{name[-60:]:<60}{cells[0]:>20}{cells[1]:>20}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
