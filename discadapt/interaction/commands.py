"""`discadapt augment`: the interaction loop (`loop.augment`) from the command line.

    discadapt augment --world --critic "world CLIP" --prompts prompts.txt --rounds 3 --out runs/augment
    discadapt augment --pipeline DIR --critic clip=/models/clip-vit-large-patch14 --critic adapter=runs/probe/adapter \
        --prompts prompts.txt --out runs/augment --objective dpo

`--critic` names a critic, once or several times (several are ranked together, `EnsembleCritic`):

- `adapter=DIR`: a discriminative adapter folder (`AdapterCritic`, its ITM logit, REC-checked layouts);
- `denoising`: the pipeline's own relative denoising error (`DenoisingCritic`);
- `clip=DIR`: a transformers CLIP folder (`CLIPCritic`);
- any scorer a plug-in registered, by name (the shapes world's "world CLIP");
- `locating`: prompts with a spatial relation are scored by where the pipeline's own denoising finds each phrase
  (`LocatingCritic`); the other critics named score the rest (nothing else named: no preference among those).

Critics are built before any image is drawn, so a missing weight folder fails first. Run the same command again to
continue an interrupted run; `--rounds` may be raised to go on. The accepted rounds' LoRAs are printed;
`fuse_enhancements(pipe, loras)` merges them (or `discadapt generate --lora` one of them).
"""

from __future__ import annotations

import argparse
import json

from ..arguments import int_at_least, number_at_least
from ..plugins import add_pipeline_arguments, pipeline_from_args

__all__ = ["add_commands", "make_critic"]


def make_critic(pipe, specs: list[str]):
    """The critic `--critic` names (see the module docstring); several are ranked together."""
    from ..plugins import registry
    from .critics import AdapterCritic, CLIPCritic, DenoisingCritic, EnsembleCritic, LocatingCritic, critic_from_name

    critics = []
    for spec in (s for s in specs if s != "locating"):
        kind, _, path = spec.partition("=")
        if kind == "adapter" and path:
            from ..adapter import DiscriminativeAdapter

            critics.append(AdapterCritic(pipe, DiscriminativeAdapter.from_pretrained(path)))
        elif kind == "clip" and path:
            critics.append(CLIPCritic.from_pretrained(path))
        elif spec == "denoising":
            critics.append(DenoisingCritic(pipe))
        elif spec in registry().scorers:
            critics.append(critic_from_name(spec))
        else:
            raise ValueError(
                f"`--critic` is {spec!r}; pass adapter=DIR, clip=DIR, denoising, locating, or a registered scorer "
                f"({', '.join(sorted(registry().scorers)) or 'none registered'})."
            )
    critic = None if not critics else critics[0] if len(critics) == 1 else EnsembleCritic(critics, method="rank")
    return LocatingCritic(pipe, fallback=critic) if "locating" in specs else critic


def augment_command(args) -> int:
    from ..data import load_prompts
    from .enhance import EnhanceConfig
    from .loop import AugmentConfig, augment

    # 1. settings and prompts (checked before anything loads), the pipeline, the critic (weights checked here)
    enhance = EnhanceConfig(
        steps=args.lora_steps, batch_size=args.lora_batch_size, lr=args.lr, lora_rank=args.lora_rank,
        lora_alpha=float(args.lora_rank), objective=args.objective, dpo_beta=args.dpo_beta, seed=args.seed,
    )  # fmt: skip
    config = AugmentConfig(
        rounds=args.rounds, candidates=args.candidates, regenerate=args.regenerate, top_k=args.top_k,
        min_margin=args.min_margin, min_gain=args.min_gain, holdout=args.holdout, holdout_images=args.holdout_images,
        steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, seed=args.seed, enhance=enhance,
    )  # fmt: skip
    prompts = load_prompts(args.prompts)
    pipe = pipeline_from_args(args).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    critic = make_critic(pipe, args.critic)
    # 2. the loop, then what it kept
    result = augment(pipe, critic, prompts, args.out, config, progress=not args.no_progress)
    for r in result["rounds"]:
        print(json.dumps({k: r.get(k) for k in ("round", "kept", "win_rate", "gain", "accepted", "lora", "stop")}))
    print(json.dumps({"loras": [str(x) for x in result["loras"]]}))
    return 0


def add_commands(subparsers) -> None:
    """Register `discadapt augment` on the `discadapt` parser."""
    p = subparsers.add_parser(
        "augment",
        help="the interaction loop: critics, regeneration, kept images, fused enhancement LoRAs (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_arguments(p)
    p.add_argument(
        "--critic", action="append", required=True, help="adapter=DIR, clip=DIR, denoising, locating, or a name"
    )
    p.add_argument("--prompts", required=True, help="prompt file, one prompt a line (training prompts)")
    p.add_argument("--out", required=True, help="run folder: round-NN/, holdout/, augment.json")
    p.add_argument("--rounds", type=int_at_least(1), default=3)
    p.add_argument("--candidates", type=int_at_least(1), default=8, help="images per prompt and round")
    p.add_argument("--regenerate", type=int_at_least(0), default=0, help="images drawn from each suggestion")
    p.add_argument("--top-k", type=int_at_least(1), default=1, help="images kept per prompt")
    p.add_argument("--min-margin", type=float, default=0.0, help="kept images beat the prompt's mean by this")
    p.add_argument("--min-gain", type=float, default=0.0, help="stop test: critic win rate - 1/2 at least this")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of prompts held aside for the stop test")
    p.add_argument("--holdout-images", type=int_at_least(1), default=4)
    p.add_argument("--steps", type=int_at_least(1), default=25, help="sampler steps")
    p.add_argument("--guidance", type=number_at_least(0), default=4.0)
    p.add_argument("--batch-size", type=int_at_least(1), default=32, help="images per pipeline call")
    p.add_argument("--objective", choices=["denoising", "dpo"], default="denoising", help="the LoRA's loss")
    p.add_argument("--dpo-beta", type=number_at_least(0), default=2000.0)
    p.add_argument("--lora-steps", type=int_at_least(1), default=300)
    p.add_argument("--lora-batch-size", type=int_at_least(1), default=32)
    p.add_argument("--lora-rank", type=int_at_least(1), default=8)
    p.add_argument("--lr", type=number_at_least(0), default=1e-4)
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=augment_command)
