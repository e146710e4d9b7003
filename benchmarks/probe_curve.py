"""Issue 12, hypothesis 2: the stage-1 learning curve on ShapeWorld. How do held-out ITM and REC grow with steps?

One stage-1 run (frozen world pipeline, a new adapter; the bundled adapter's settings by default: `mid_block`,
`up_blocks.0`, `up_blocks.1`, hidden 128, `itm_text="tokens"`, batch 16, lr 3e-4 constant, t in [0, 500), 3 hard
negative captions and 1 edited-scene negative image) is trained in slices up to each of `--at` steps; after each
slice the adapter is measured on held-out scenes (never on training ones):

- the text side against hard negatives per category (`probing.hard_negative_accuracy`, 100 scenes per category
  and split, t=250: the demo's probing table, where the base model's own denoising error scores .930 / .880 /
  .785 / .390 / .435);
- ITM text side, image side and REC@0.5 over all categories (`probing.adapter_item_results`, as the demo's adapter
  table, 250 items per split).

The learning rate is constant, so the adapter at step K equals that of a K-step run. Resumable: the training run
keeps checkpoints, and OUT/curve.json gains a point per finished slice (the adapter of each in OUT/adapter-K); rerun
with larger `--at` to extend it. `--tuned` probes the bundled tuned model (stage-2 LoRA fused) instead of the base
model: an adapter fitted to the features the tuned model's self-correction reads (`--unstacked`: without the LoRAs
stacked on the stage-2 LoRA, the model the bundled `tuned_adapter` was probed on).

    python benchmarks/probe_curve.py --out runs/probe-curve --at 1500 3000 6000 12000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, set_threads  # noqa: E402

from discadapt.io import write_atomic  # noqa: E402
from discadapt.scorers import AdapterScorer, FunctionScorer  # noqa: E402
from discadapt.train import ProbeConfig  # noqa: E402
from discadapt.train.engine import run_training  # noqa: E402
from discadapt.train.probe import ProbeObjective  # noqa: E402
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems  # noqa: E402
from discadapt.worlds.shapes.bundle import load_lora, load_pipeline  # noqa: E402
from discadapt.worlds.shapes.plugin import TRAIN_EXAMPLES  # noqa: E402
from discadapt.worlds.shapes.probing import SPLITS, adapter_item_results, hard_negative_accuracy  # noqa: E402

T = 250  # the demo's probing timestep (rows.ADAPTER_T)
BUNDLED = {  # the bundled stage-1 adapter's settings (README, "DPT on the world")
    "layers": ["mid_block", "up_blocks.0", "up_blocks.1"],
    "adapter_config": {
        "hidden_size": 128,
        "num_heads": 4,
        "num_itm_queries": 4,
        "num_rec_queries": 6,
        "grid_size": 8,
        "itm_text": "tokens",
    },
}


def hard_negatives(pipe, adapter, n: int, t=T, blank: bool = False, splits=SPLITS, scorer=None) -> dict:
    """Per category, the text-side accuracy against hard negatives on `splits` (the demo's probing table), the ITM
    logit averaged over the timestep(s) `t`; with `blank`, every scene replaced by a black image (the captions
    alone). `scorer` replaces the adapter's (e.g. the denoising score)."""
    scorer = seeing = scorer or AdapterScorer(pipe, adapter, t=t, batch_size=100)
    if blank:
        scorer = FunctionScorer("blank images", lambda images, texts: seeing.score(np.zeros_like(images), texts))
    return {c: iv.estimate for c, iv in hard_negative_accuracy(scorer, n=n, splits=splits).items()}


def item_accuracies(pipe, adapter, n: int, splits=SPLITS) -> dict:
    """ITM text side, image side and REC@0.5 over `n` items of all categories per split (pooled), at t=T
    (`probing.adapter_item_results`). The "train" split gives the first items the adapter trained on."""
    found = adapter_item_results(pipe, adapter, n=n, t=T, splits=splits)
    return {kind: sum(right) / len(right) if right else None for kind, right in found.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--at", type=int, nargs="+", default=[1500, 3000, 6000, 12000], help="steps to measure at")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--layers", nargs="+", default=BUNDLED["layers"])
    parser.add_argument("--adapter-config", default=json.dumps(BUNDLED["adapter_config"]), help="JSON")
    parser.add_argument("--probe-examples", type=int, default=100, help="held-out scenes per category and split")
    parser.add_argument("--items", type=int, default=250, help="held-out items per split (ITM sides, REC)")
    parser.add_argument("--tuned", action="store_true", help="probe the bundled tuned pipeline (stage-2 LoRA fused)")
    parser.add_argument("--unstacked", action="store_true", help="with --tuned: without the LoRAs stacked on it")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.unstacked and not args.tuned:
        parser.error("`--unstacked` applies to --tuned; pass that too, or drop --unstacked.")
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    marks = sorted(set(args.at))
    config = ProbeConfig(
        steps=marks[-1],
        batch_size=args.batch_size,
        lr=args.lr,
        timestep_range=(0, 500),
        layers=tuple(args.layers),
        adapter_config=json.loads(args.adapter_config),
        num_neg_captions=3,
        num_neg_images=1,
        checkpoint_every=min(500, marks[0]),
    )
    curve_path = out / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else {"settings": vars(args), "points": []}
    done = {p["step"] for p in curve["points"]}
    pipe = load_lora(load_pipeline(), stack=not args.unstacked) if args.tuned else load_pipeline()
    dataset = ShapeWorldItems(TRAIN_EXAMPLES, split="train", seed=0, image_size=32)
    for mark in marks:
        if mark in done:
            continue
        objective = ProbeObjective(pipe, dataset, config)
        began = time.perf_counter()
        result = run_training(objective, out / "run", resume=(out / "run").exists(), stop_after=mark)
        trained = time.perf_counter() - began
        point = {"step": result["step"], "samples": result["step"] * args.batch_size, "loss": result["losses"]}
        adapter = objective.module.adapter
        adapter.save_pretrained(out / f"adapter-{mark}")
        adapter.eval()
        point.update(hard_negatives(pipe, adapter, args.probe_examples))
        point.update(item_accuracies(pipe, adapter, args.items))  # the next slice builds its objective anew
        point["seconds_train"], point["seconds_eval"] = trained, time.perf_counter() - began - trained
        curve["points"].append(point)
        write_atomic(curve_path, json.dumps(curve, indent=1) + "\n")
        log(json.dumps({k: v for k, v in point.items() if k != "loss"}))
    print(json.dumps(curve["points"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
