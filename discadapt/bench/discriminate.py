"""`discadapt bench discriminate`: the discriminative suites: a pipeline's adapter on image-text matching against hard
negatives and on referring expressions.

    discadapt bench discriminate --pipeline /models/sd15 --adapter runs/probe/adapter \
        --captions captions_val2017.json --images val2017 --negatives negclip_val.json --limit 500 --out itm-out
    discadapt bench discriminate --pipeline /models/sd15 --adapter runs/probe/adapter \
        --refs refcocog_val.json --ref-images train2014 --out rec-out

The data are the readers of `discadapt probe` (`--captions/--images/--negatives`: COCO captions with NegCLIP-style
hard negatives; `--refs/--ref-images`: RefCOCO / MDETR referring expressions; `--folder`; a plug-in's, e.g. the
shapes world's `--shapes N`), the first `--limit` items of each. `train.evaluate_adapter` scores them: ITM text side
(the caption beats every negative caption), image side (the image beats every negative image), and REC at IoU 0.5.
Each accuracy is printed and written to `results.json` per category with its 95% bootstrap interval over items.

Example (the shapes world's held-out scenes):
    discadapt probe --world --out runs/probe --steps 1500
    discadapt bench discriminate --world --adapter runs/probe/adapter --shapes 200 --out d-out
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..io import write_atomic
from .report import Table
from .stats import bootstrap_ci

__all__ = ["add_command", "discriminate", "accuracy_rows"]

KINDS = (("itm_text", "ITM text side"), ("itm_image", "ITM image side"), ("rec", "REC@0.5"))


def accuracy_rows(result: dict, seed: int = 0) -> dict:
    """`{category: {kind: {"accuracy", "ci_low", "ci_high", "n"}}}` from `evaluate_adapter`'s result, each with a 95%
    percentile-bootstrap interval over items (kinds an item set has none of are left out)."""
    out = {}
    for category, found in result.items():
        out[category] = {}
        for kind, _ in KINDS:
            n = int(found.get(f"n_{kind}") or 0)
            if n and found.get(kind) is not None:
                right = round(found[kind] * n)
                ci = bootstrap_ci([1] * right + [0] * (n - right), seed=seed)
                out[category][kind] = {"accuracy": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n": n}
    return out


def _table(rows: dict) -> Table:
    cell = lambda s: "" if s is None else f"{s['accuracy']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] n={s['n']}"  # noqa: E731
    body = [[category, *[cell(found.get(kind)) for kind, _ in KINDS]] for category, found in rows.items()]
    return Table("discrimination accuracy [95% CI over items]", ["category", *[name for _, name in KINDS]], body,
                 note="ITM: the positive beats every hard negative (ties lose); REC: the top box at IoU >= 0.5",
                 )  # fmt: skip


def discriminate(args) -> int:
    """`discadapt bench discriminate` (see the module docstring)."""
    import torch
    from torch.utils.data import ConcatDataset, Subset

    from ..adapter import DiscriminativeAdapter
    from ..loading import load_lora
    from ..plugins import pipeline_from_args
    from ..train.commands import datasets_from_args
    from ..train.evaluate import evaluate_adapter

    # 1. the data and the adapter (checked before the pipeline loads), then the pipeline with its LoRA
    started = time.perf_counter()
    found = datasets_from_args(args)
    data = [d if args.limit is None else Subset(d, range(min(args.limit, len(d)))) for d in found]
    categories = list(dict.fromkeys(c for d in found for c in getattr(d, "categories", ()))) or None
    adapter = DiscriminativeAdapter.from_pretrained(args.adapter).to(args.device)
    pipe = pipeline_from_args(args)
    if args.lora:
        load_lora(pipe, args.lora, "--lora")
    pipe = pipe.to(args.device)
    # 2. the accuracies, with intervals
    with torch.no_grad():
        result = evaluate_adapter(pipe, adapter, ConcatDataset(data), timesteps=args.timesteps,
                                  batch_size=args.batch_size, seed=args.seed, categories=categories,
                                  progress=not args.no_progress)  # fmt: skip
    rows = accuracy_rows(result, args.seed)
    table = _table(rows)
    print(table.format())
    # 3. results.json
    settings = {"adapter": os.path.abspath(args.adapter), "lora": args.lora and os.path.abspath(args.lora),
                "timesteps": args.timesteps, "limit": args.limit, "seed": args.seed}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"settings": settings, "accuracy": rows, "seconds": time.perf_counter() - started}
    write_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


def add_command(commands) -> None:
    """Register `bench discriminate` on the `bench` subparsers."""
    from ..arguments import int_at_least
    from ..plugins import add_pipeline_arguments
    from ..train.commands import add_data_arguments

    d = commands.add_parser("discriminate", help="an adapter's ITM accuracy against hard negatives and REC@0.5")
    add_pipeline_arguments(d)
    d.add_argument("--adapter", required=True, help="discriminative adapter folder")
    d.add_argument("--lora", help="LoRA folder of the pipeline the adapter was tuned with (stage 2)")
    d.add_argument("--out", required=True, help="output folder: results.json")
    add_data_arguments(d)
    d.add_argument("--limit", type=int_at_least(1), help="the first N items of each dataset (default all)")
    d.add_argument("--timesteps", type=int, nargs="+", help="timesteps whose scores are averaged (default T // 2)")
    d.add_argument("--batch-size", type=int_at_least(1), default=8, help="items per UNet call")
    d.add_argument("--seed", type=int_at_least(0), default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=discriminate)
