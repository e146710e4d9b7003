"""Issue 12: how the adapter's held-out hard-negative accuracy (the demo's probing table,
`probe_curve.hard_negatives`) depends on how it is read.

- `--t`: the ITM logit averaged over a set of timesteps, as the denoising score averages its error over 10;
- `--blind`: the same table with every scene replaced by a blank (black) image. The captions of one example are
  still ranked against each other, so what the adapter gets right there it gets from the captions alone (a text
  prior), not from the image;
- `--per-split`: the table on each held-out split alone (`test_id`: seen attribute-shape combinations in new scenes,
  `test_ood`: unseen combinations), with `--denoising` the pipeline's own denoising error (10 t) beside it;
- `--items N`: ITM text side, image side and REC@0.5 on N items of each split, the training split's first N (items
  the adapter trained on) included: underfitting or failing to generalise.

    python benchmarks/adapter_readout.py [--adapter DIR] --t 250 --t 100 250 400 --t 50 150 250 350 450 [--blind]
    python benchmarks/adapter_readout.py --adapter runs/probe-curve/adapter-3000 --t 250 --per-split --denoising \
        --items 250
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from probe_curve import T, hard_negatives, item_accuracies  # noqa: E402

from discadapt.adapter import DiscriminativeAdapter  # noqa: E402
from discadapt.scorers import DenoisingScorer  # noqa: E402
from discadapt.worlds.shapes.bundle import load_pipeline  # noqa: E402
from discadapt.worlds.shapes.probing import SPLITS  # noqa: E402
from discadapt.worlds.shapes.rows import SCORE_BATCH, bundled_adapter  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", help="a saved adapter folder (default: the bundled stage-1 adapter)")
    parser.add_argument("--t", type=int, nargs="+", action="append", required=True, help="a timestep set")
    parser.add_argument("--blind", action="store_true", help="also score with blank images instead of the scenes")
    parser.add_argument("--per-split", action="store_true", help="each held-out split alone")
    parser.add_argument("--denoising", action="store_true", help="also the denoising score (10 timesteps)")
    parser.add_argument("--items", type=int, help="also the ITM sides and REC on this many items of each split")
    parser.add_argument("--probe-examples", type=int, default=100)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    pipe = load_pipeline()
    adapter = (DiscriminativeAdapter.from_pretrained(args.adapter) if args.adapter else bundled_adapter()).eval()
    splits = [[s] for s in SPLITS] if args.per_split else [list(SPLITS)]
    rows = [({"t": ts, "blind": blind}, None) for ts in args.t for blind in ((False, True) if args.blind else (False,))]
    if args.denoising:
        rows.append(({"denoising": 10}, DenoisingScorer(pipe, num_timesteps=10, batch_size=SCORE_BATCH)))
    for split in splits:
        for row, scorer in rows:
            options = {"t": row.get("t", T), "blank": row.get("blind", False), "splits": split, "scorer": scorer}
            found = hard_negatives(pipe, adapter, args.probe_examples, **options)
            print(json.dumps({**row, "splits": split, **{k: round(v, 3) for k, v in found.items()}}), flush=True)
    for split in ("train", *SPLITS) if args.items else ():
        found = item_accuracies(pipe, adapter, args.items, splits=[split])
        print(json.dumps({"items": split, **{k: v and round(v, 3) for k, v in found.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
