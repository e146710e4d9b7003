"""`discadapt world ...`: retrain and bundle the shapes world's models.

discadapt world train --out RUN [--seed 0] [--steps N]   train (or resume) the world's models: RUN/world (the
                                                        text-to-image pipeline), then RUN/clip (the world CLIP)
discadapt world bundle RUN                              bundle RUN's models into the package
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["add_commands"]


def _train(args) -> int:
    import torch

    from .clip import WorldClipSizes, train_world_clip
    from .models import ModelSizes
    from .train import train_world

    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {} if args.steps is None else {"vae_steps": args.steps, "unet_steps": args.steps}
    if args.unet_steps is not None:
        steps["unet_steps"] = args.unet_steps
    result = train_world(
        Path(args.out) / "world",
        seed=args.seed,
        sizes=ModelSizes.tiny() if args.tiny else None,
        device=args.device,
        stop_after=args.stop_after,
        **steps,
    )
    clip = None
    if result["done"]:
        clip = train_world_clip(
            Path(args.out) / "clip",
            seed=args.seed,
            sizes=WorldClipSizes.tiny() if args.tiny else None,
            device=args.device,
            **({} if args.steps is None else {"steps": args.steps}),
        )
    print(json.dumps({"world": result, "clip": clip}))
    return 0


def _bundle(args) -> int:
    from .bundle import bundle_clip, bundle_world

    for name, bundle in (("world", bundle_world), ("clip", bundle_clip)):
        path = bundle(Path(args.run) / name, None if args.dest is None else Path(args.dest) / name)
        print(f"bundled {path}")
    return 0


def add_commands(subparsers) -> None:
    """Register `world train` and `world bundle` on an argparse `subparsers` object."""
    world = subparsers.add_parser("world", help="retrain and bundle the shapes world's models")
    commands = world.add_subparsers(dest="world_command", required=True)

    train = commands.add_parser("train", help="train (or resume) the world's models from a seed")
    train.add_argument("--out", required=True, help="run folder; an interrupted run resumes from it")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps", type=int, default=None, help="VAE and UNet steps each (a smoke test: --steps 2)")
    train.add_argument("--unet-steps", type=int, default=None, help="UNet steps (default: the module's)")
    train.add_argument("--stop-after", type=int, default=None, help="stop after this many global steps")
    train.add_argument("--device", default="cpu")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    train.add_argument("--tiny", action="store_true", help="tiny models (tests)")
    train.set_defaults(func=_train)

    bundle = commands.add_parser("bundle", help="bundle a run's newest checkpoints into the package")
    bundle.add_argument("run", help="a `discadapt world train` folder")
    bundle.add_argument("--dest", default=None, help="weights root (default: the package's weights/ folder)")
    bundle.set_defaults(func=_bundle)
