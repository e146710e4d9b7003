"""Issue 12: the tuned model's self-correction distilled into its weights (`interaction.distil`), so that the tuned
row gains what the correction gains at the base pipeline's cost.

1. Prompts: train-split captions that the choosing benchmarks never draw (`augment_shapes.train_prompts` past the
   first `--skip` of each category), and every counting caption (the split has only 43, all of them also in the
   choosing prompts: the only overlap, with other seeds). No demo prompt is ever used.
2. The bundled tuned model (the stage-2 LoRA fused) samples each prompt `--seeds` times with its self-correction
   (`tuned_adapter`, `rows.TUNED_CORRECTION`, reuse mode, as the demo's tuned row; `--teacher layout`: the layout
   term alone, `rows.LAYOUT`; `--teacher both`: the correction, then the layout term, as the demo's layout row);
   every step is recorded (OUT/trajectories, written once).
3. A LoRA on the tuned UNet learns to take the corrected steps itself (OUT/lora-lrLR-rRANK or OUT/NAME,
   resumable; runs of other settings share the recorded steps).

Then compare it uncorrected against the bundled tuned model on the train split (and hold the chosen one out):

    python benchmarks/distil_correction.py --out runs/distil
    python benchmarks/tuned_variants.py --out runs/tuned-variants-distil --runs bundled bundled+runs/distil/run \
        --prompts-per-category 120 [--held-out]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers.callbacks import MultiPipelineCallbacks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, set_threads  # noqa: E402
from _protocol import MULTI, STEPS  # noqa: E402
from augment_shapes import train_prompts  # noqa: E402

from discadapt.interaction import EnhanceConfig  # noqa: E402
from discadapt.interaction.distil import Trajectories, distil_correction, record_trajectories  # noqa: E402
from discadapt.sampling import SelfCorrection, layout_term  # noqa: E402
from discadapt.worlds.shapes.rows import GUIDANCE, LAYOUT, TUNED_CORRECTION, bundled_tuned  # noqa: E402


def distil_prompts(skip: int, per_category: int) -> dict[str, str]:
    """prompt -> category: multi-object train-split captions ranked after the first `skip` of their category (all
    of counting's), at most `per_category` each."""
    ranked = train_prompts(skip + per_category)
    seen: dict[str, int] = {}
    chosen = {}
    for prompt, category in ranked.items():
        if category not in MULTI:
            continue
        seen[category] = seen.get(category, 0) + 1
        if category == "counting" or seen[category] > skip:
            chosen[prompt] = category
    return chosen


def teacher(kind: str, pipe, adapter):
    """`prompts of a batch -> step-end callback`: the tuned model's correction, the layout term, or both in turn."""
    correction = {**TUNED_CORRECTION, "mode": "reuse"}

    def make(batch):
        terms = []
        if kind in ("correction", "both"):
            terms.append(SelfCorrection(adapter, batch, **correction))
        if kind in ("layout", "both"):
            terms.append(layout_term(pipe, batch, **LAYOUT))
        return terms[0] if len(terms) == 1 else MultiPipelineCallbacks(terms)

    return make


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--skip", type=int, default=120, help="first captions per category left to the choosing prompts")
    p.add_argument("--prompts-per-category", type=int, default=200)
    p.add_argument("--seeds", type=int, default=4, help="corrected images recorded per prompt")
    p.add_argument("--teacher", choices=["correction", "layout", "both"], default="correction")
    p.add_argument(
        "--moved-prompts-only", action="store_true",
        help="learn only from the prompts the teacher moved (every step of them), not from those it left alone",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-targets", nargs="+", default=list(EnhanceConfig.lora_targets), help="UNet modules with LoRA")
    p.add_argument("--name", help="the run's folder in OUT (default lora-lrLR-rRANK)")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    set_threads(args.threads)
    out = Path(args.out)
    prompts = distil_prompts(args.skip, args.prompts_per_category)
    counts = {c: sum(v == c for v in prompts.values()) for c in MULTI}
    log(f"{len(prompts)} prompts {counts} x {args.seeds} corrected images")
    tuned, adapter = bundled_tuned()
    tuned.set_progress_bar_config(disable=True)
    folder = out / "trajectories"
    if (folder / "trajectories.safetensors").is_file():
        data = Trajectories.load(folder)
    else:
        data = record_trajectories(tuned, list(prompts), teacher(args.teacher, tuned, adapter), seeds=range(args.seeds),
                                   num_inference_steps=STEPS, guidance_scale=GUIDANCE)  # fmt: skip
        data.save(folder)
    moved = data.shift.flatten(1).abs().sum(1) > 0
    corrected = int(moved.sum())
    log(f"{len(data)} steps recorded, {corrected} of them corrected")
    if args.moved_prompts_only:
        data = data.subset(torch.isin(data.prompt_ids, data.prompt_ids[moved]))
        log(f"learning from the {len(data)} steps of the prompts it moved")
    config = EnhanceConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lora_rank=args.lora_rank,
                           lora_alpha=float(args.lora_rank), lora_targets=tuple(args.lora_targets),
                           checkpoint_every=250)  # fmt: skip
    name = args.name or f"lora-lr{args.lr:g}-r{args.lora_rank}"
    result = distil_correction(tuned, data, out / name, config)
    summary = {"args": vars(args), "prompts": counts, "rows": len(data), "corrected_rows": corrected,
               "losses": result.get("losses"), "lora": result.get("lora")}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
