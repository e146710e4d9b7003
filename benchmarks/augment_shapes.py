"""The interaction loop (ArtAug) on the shapes world: train-split prompts only, a learned critic, then the oracle.

1. Prompts: per category, `--prompts-per-category` distinct *train-split* captions, minus any caption that is also
   one of `discadapt demo`'s held-out prompts (so no demo prompt is ever generated, scored or trained on).
2. The loop (`discadapt.interaction.augment`) with the chosen critic; its stop test uses held-aside *training*
   prompts and the critic, never the oracle.
3. The oracle's accuracy per category on the held-aside training prompts, for every model of the loop (the images
   the stop test drew): this is what settings are chosen on.
4. With `--demo`: `discadapt demo`'s held-out prompts, base row and one row per accepted round (the LoRAs fused;
   also the round the stop test rejected, marked so, for the record),
   paired differences to base with 95% intervals, time per image.

    python benchmarks/augment_shapes.py --critic clip --out runs/augment-clip --rounds 3 [--demo]

`--tuned-corrected`: the loop runs on the bundled tuned model generating with its self-correction (`tuned_adapter`,
`rows.TUNED_CORRECTION`), so each round distils the corrected images the critic picks into an enhancement LoRA of
the tuned model (compare it uncorrected with `tuned_variants.py`: the soup's members plus `round-01/lora`); with
`--layout` the sampler adds the layout term (`rows.LAYOUT`, the demo's layout row), whose gain is spatial relations.

Resumable: run the same command again after an interruption. Writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402

from discadapt.interaction.dataset import RoundData  # noqa: E402
from discadapt.interaction.enhance import EnhanceConfig, fuse_enhancements  # noqa: E402
from discadapt.interaction.loop import AugmentConfig, augment  # noqa: E402
from discadapt.worlds.shapes.captions import CATEGORIES, parse  # noqa: E402
from discadapt.worlds.shapes.oracle import check  # noqa: E402
from discadapt.worlds.shapes.suite import MULTI_OBJECT, _distinct, demo_prompts  # noqa: E402

MULTI = MULTI_OBJECT  # the multi-object categories


def train_prompts(per_category: int, seed: int = 0) -> dict[str, str]:
    """prompt -> category: distinct train-split captions, none of them a demo prompt."""
    held = {p.text for p in demo_prompts(None, n_prompts=40)}
    chosen = {}
    for category in CATEGORIES:
        for prompt in _distinct(category, "train", seed, 32):
            if len([c for c in chosen.values() if c == category]) >= per_category:
                break
            if prompt.text not in held:
                chosen[prompt.text] = category
    return chosen


def make_critic(name: str, pipe):
    """The loop's critic: the world CLIP; the planned layout checked by the pipeline's own denoising for prompts with
    a relation, the world CLIP for the rest (`locate`); the bundled stage-1 adapter's ITM logit; or CLIP and the
    adapter ranked together (`ensemble`)."""
    from discadapt.interaction.critics import LocatingCritic, critic_from_name

    if name == "clip":
        return critic_from_name("world CLIP")  # suggests the layout planned from the prompt's relation words
    if name == "locate":
        return LocatingCritic(pipe, fallback=critic_from_name("world CLIP"), batch_size=256)
    from discadapt.scorers import AdapterScorer
    from discadapt.worlds.shapes.rows import bundled_adapter

    adapter = AdapterScorer(pipe, bundled_adapter(), t=250)
    if name == "adapter":
        return adapter
    from discadapt.interaction.critics import EnsembleCritic

    return EnsembleCritic([critic_from_name("world CLIP"), adapter], method="rank")


def tuned_corrected(layout: bool = False):
    """The bundled tuned pipeline (stage-2 LoRA fused) wrapped with its self-correction, as the demo's tuned rows;
    with `layout`, the layout term after it (`rows.LAYOUT`, the demo's layout row)."""
    from discadapt.sampling import SelfCorrectingPipeline
    from discadapt.worlds.shapes.rows import LAYOUT, TUNED_CORRECTION, bundled_tuned

    tuned, adapter = bundled_tuned()
    correction = {**TUNED_CORRECTION, "mode": "reuse"}
    return SelfCorrectingPipeline.from_pipe(
        tuned, adapter=adapter, correction=correction, layout=LAYOUT if layout else None
    )


def oracle_table(out: Path, rounds: list[dict], category_of: dict[str, str]) -> dict:
    """Oracle accuracy per category of each model's held-aside images (model 0: base)."""
    table = {}
    for model in range(len(rounds) + 1):
        data = RoundData(out / "holdout" / f"model-{model:02d}")
        if not data.candidates():
            continue
        hits: dict[str, list[bool]] = {}
        for c in data.candidates():
            image = np.asarray(Image.open(data.folder / c.file).convert("RGB"))
            hits.setdefault(category_of[c.prompt], []).append(check(image, parse(c.prompt)).ok)
        row = {k: float(np.mean(v)) for k, v in hits.items()}
        row["multi"] = float(np.mean([row[k] for k in MULTI if k in row]))
        row["all"] = float(np.mean([x for v in hits.values() for x in v]))
        table[f"model {model}"] = row
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--critic", choices=["clip", "locate", "adapter", "ensemble"], default="clip")
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts-per-category", type=int, default=100)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--regenerate", type=int, default=0, help="images drawn from each critic suggestion")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--min-margin", type=float, default=0.0)
    p.add_argument("--min-gain", type=float, default=0.0)
    p.add_argument("--lora-steps", type=int, default=300)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--objective", choices=["denoising", "dpo"], default="denoising", help="the LoRA's loss")
    p.add_argument("--dpo-beta", type=float, default=2000.0)
    p.add_argument("--holdout-images", type=int, default=4, help="images per held-aside prompt and model")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tuned-corrected", action="store_true", help="generate with the tuned model and its correction")
    p.add_argument("--categories", nargs="+", choices=CATEGORIES, default=list(CATEGORIES), help="prompts' categories")
    p.add_argument("--layout", action="store_true", help="with --tuned-corrected: the layout term after the correction")
    p.add_argument("--demo", action="store_true", help="also run the demo's held-out prompts, one row per round")
    p.add_argument("--quick-demo", action="store_true", help="the demo's small settings (a smoke test)")
    args = p.parse_args(argv)
    set_threads(args.threads)

    from discadapt.worlds.shapes import load_pipeline

    out = Path(args.out)
    # 1. prompts; 2. the loop
    category_of = {k: c for k, c in train_prompts(args.prompts_per_category).items() if c in args.categories}
    if args.layout and not args.tuned_corrected:
        p.error("--layout adds the layout term to --tuned-corrected's sampler; pass both")
    pipe = load_pipeline() if not args.tuned_corrected else tuned_corrected(args.layout)
    enhance = EnhanceConfig(
        steps=args.lora_steps, batch_size=args.batch_size, lr=args.lr, lora_rank=args.lora_rank,
        lora_alpha=float(args.lora_rank), objective=args.objective, dpo_beta=args.dpo_beta,
    )  # fmt: skip
    config = AugmentConfig(
        rounds=args.rounds, candidates=args.candidates, regenerate=args.regenerate, top_k=args.top_k,
        min_margin=args.min_margin, min_gain=args.min_gain, holdout=0.2, holdout_images=args.holdout_images,
        enhance=enhance,
    )  # fmt: skip
    result = augment(pipe, make_critic(args.critic, pipe), list(category_of), out, config)
    # 3. the oracle on the held-aside training prompts
    summary = {"critic": args.critic, "args": vars(args), "rounds": result["rounds"],
               "held_aside_oracle": oracle_table(out, result["rounds"], category_of)}  # fmt: skip
    print(f"critic {args.critic}: oracle accuracy on held-aside training prompts ({len(result['held_prompts'])})")
    for name, row in summary["held_aside_oracle"].items():
        print(f"  {name}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    for r in result["rounds"]:
        print(f"  round {r['round']}: kept {r['kept']}, critic win rate {r.get('win_rate')}, accepted {r['accepted']}")
    # 4. the demo's held-out prompts
    if args.demo and any(r.get("lora") for r in result["rounds"]):
        from discadapt.bench.methods import pipeline_method
        from discadapt.worlds.shapes.demo import run_demo

        methods, loras = {}, list(result["loras"])
        rejected = [r["lora"] for r in result["rounds"] if not r["accepted"] and r.get("lora")]
        for k in range(1, len(loras) + len(rejected) + 1):  # the round the stop test rejected too, for the record
            enhanced = load_pipeline()
            fuse_enhancements(enhanced, (loras + rejected)[:k])
            name = f"interaction ({args.critic}, {k} round{'s' * (k > 1)}{', rejected' * (k > len(loras))})"
            methods[name] = pipeline_method(enhanced, 25, 4.0)
        demo = run_demo(None, out / "demo", methods=methods, weights=f"augment {out}", quick=args.quick_demo)
        keys = ("overall", "categories", "difference_to_base", "time_ratio")
        summary["demo"] = {name: {key: m.get(key) for key in keys} for name, m in demo["methods"].items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
