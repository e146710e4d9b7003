"""The shapes world's commands, registered through its plug-in (`plugin.py`).

discadapt demo [--quick] [--out DIR] [--restart]        the held-out prompts, judged by the oracle: tables,
                                                        results.json and report.html (an interrupted demo
                                                        continues; --restart discards it)
discadapt world train --out RUN [--seed 0] [--steps N]   train (or resume) the world's models: RUN/world (the
                                                        text-to-image pipeline), then RUN/clip (the world CLIP)
discadapt world bundle RUN                              bundle a finished RUN's models into the package
discadapt world bundle --probe RUN                      bundle the adapter of a `discadapt probe --world` run
discadapt world bundle --tune RUN                       bundle the LoRA and adapter of a `discadapt tune --world` run
discadapt world bundle --tune RUN --soup LORA [...]     the same, the LoRA the mean of its and more runs' updates
discadapt world bundle --stack LORA [...]               add LoRAs trained on the tuned model (reward_tuning.py's) to it
discadapt world bundle --tuned-adapter DIR              bundle an adapter for the tuned model (e.g. probed on it)
discadapt world bundle --augment RUN [--rounds K]       bundle the enhancement LoRAs of an interaction loop run
"""

from __future__ import annotations

import json
from pathlib import Path

from ...arguments import int_at_least, number_at_least

__all__ = ["add_commands"]


def _demo(args) -> int:
    """`discadapt demo`: `demo.run_demo` (the world's suite through `bench.run_suite`) on the bundled world (with
    the rows of every bundled model) or a `--pipeline` folder."""
    from ...data import load_prompts
    from .demo import FULL, QUICK, run_demo, weights_fingerprint
    from .rows import demo_rows, probing_table

    prompts = load_prompts(args.prompts) if args.prompts else None
    steps = args.steps or (QUICK if args.quick else FULL)["steps"]
    if args.pipeline is None:  # the bundled world, with the rows of every bundled model
        from .bundle import load_pipeline

        pipe, weights = load_pipeline(device=args.device), f"bundle {weights_fingerprint()}"
        methods, tables = demo_rows(
            pipe, steps, args.guidance, args.quick, not args.no_correction, not args.no_probing, args.device
        )
    else:
        pipe, methods, weights = args.pipeline, {}, None
        tables = [] if args.no_probing else [probing_table(quick=args.quick)]
    run_demo(
        pipe,
        args.out,
        quick=args.quick,
        categories=args.categories,
        n_prompts=args.n_prompts,
        images_per_prompt=args.images_per_prompt,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        device=args.device,
        prompts=prompts,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        methods=methods,
        extra_tables=tables,
        resume=not getattr(args, "restart", False),
        weights=weights,
    )
    return 0


def _train(args) -> int:
    import torch

    from .clip import WorldClipSizes
    from .clip.train import train_world_clip
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
    from functools import partial

    from .bundle import bundle_adapter, bundle_clip, bundle_interaction, bundle_lora, bundle_world

    if not (args.run or args.probe or args.tune or args.stack or args.augment or args.tuned_adapter):
        raise ValueError(
            "`discadapt world bundle` needs a world RUN folder, --probe RUN, --tune RUN, --stack LORA, "
            "--tuned-adapter DIR or --augment RUN."
        )
    if args.tuned_adapter and not (Path(args.tuned_adapter) / "config.json").is_file():
        raise FileNotFoundError(
            f"`--tuned-adapter` is {args.tuned_adapter!r}, which holds no saved adapter (config.json); pass a folder "
            "written by `DiscriminativeAdapter.save_pretrained` (e.g. `probe_curve.py --tuned`'s adapter-K)."
        )
    if args.rounds is not None and not args.augment:
        raise ValueError("`--rounds` applies to --augment RUN; pass that too, or drop --rounds.")
    if args.soup and not args.tune:
        raise ValueError("`--soup` applies to --tune RUN; pass that too, or drop --soup.")
    soup, stack = ([Path(f) / "lora" if (Path(f) / "lora").is_dir() else Path(f) for f in folders or ()]
                   for folders in (args.soup, args.stack))  # fmt: skip
    for run, parts in ((args.probe, ("adapter",)), (args.tune, ("lora", "adapter"))):
        for part in parts if run else ():
            if not (Path(run) / part).is_dir():
                raise FileNotFoundError(f"{Path(run) / part} is missing: has that run finished? Nothing was bundled.")
    jobs = []  # (bundle name, source folder, bundling function)
    if args.run:
        jobs += [("world", Path(args.run) / "world", bundle_world), ("clip", Path(args.run) / "clip", bundle_clip)]
    if args.probe:
        jobs.append(("adapter", Path(args.probe) / "adapter", bundle_adapter))
    if args.tune or stack:  # --stack alone: on the bundled LoRA
        jobs.append(("lora", args.tune and Path(args.tune) / "lora", partial(bundle_lora, soup=soup, stack=stack)))
    if args.tune or args.tuned_adapter:
        adapter = Path(args.tuned_adapter) if args.tuned_adapter else Path(args.tune) / "adapter"
        jobs.append(("tuned_adapter", adapter, partial(bundle_adapter, name="tuned_adapter")))
    if args.augment:
        jobs.append(("interaction", Path(args.augment), partial(bundle_interaction, rounds=args.rounds)))
    for name, source, bundle in jobs:
        print(f"bundled {bundle(source, None if args.dest is None else Path(args.dest) / name)}")
    return 0


def add_commands(subparsers) -> None:
    """Register `demo`, `world train` and `world bundle` on an argparse `subparsers` object."""
    d = subparsers.add_parser("demo", help="the shapes world's held-out prompts judged by its oracle, with a report")
    add_demo_arguments(d)
    d.set_defaults(func=_demo)

    world = subparsers.add_parser("world", help="retrain and bundle the shapes world's models")
    commands = world.add_subparsers(dest="world_command", required=True)

    train = commands.add_parser("train", help="train (or resume) the world's models from a seed")
    train.add_argument("--out", required=True, help="run folder; an interrupted run resumes from it")
    train.add_argument("--seed", type=int_at_least(0), default=0)
    train.add_argument(
        "--steps", type=int_at_least(1), default=None, help="VAE and UNet steps each (a smoke test: --steps 2)"
    )
    train.add_argument("--unet-steps", type=int_at_least(1), default=None, help="UNet steps (default: the module's)")
    train.add_argument("--stop-after", type=int_at_least(1), default=None, help="stop after this many global steps")
    train.add_argument("--device", default="cpu")
    train.add_argument("--threads", type=int_at_least(0), default=0, help="torch CPU threads (0: torch's default)")
    train.add_argument("--tiny", action="store_true", help="tiny models (tests)")
    train.set_defaults(func=_train)

    bundle = commands.add_parser("bundle", help="bundle trained runs' models into the package")
    bundle.add_argument("run", nargs="?", help="a `discadapt world train` folder (the world pipeline and CLIP)")
    bundle.add_argument("--probe", help="a finished `discadapt probe --world` folder (its adapter)")
    bundle.add_argument("--tune", help="a finished `discadapt tune --world` folder (its LoRA and adapter)")
    bundle.add_argument(
        "--soup", nargs="+", metavar="LORA",
        help="with --tune: more stage-2 LoRAs (tune run or LoRA folders); the bundled LoRA is the mean of their "
        "updates and --tune's (the adapter stays --tune's)",
    )  # fmt: skip
    bundle.add_argument(
        "--stack", nargs="+", metavar="LORA",
        help="LoRAs trained on the tuned model (e.g. benchmarks/reward_tuning.py's OUT/lora-K), bundled beside the "
        "stage-2 LoRA at full weight and fused on top of it; alone: added to the bundled LoRA (kept as it is)",
    )  # fmt: skip
    bundle.add_argument(
        "--tuned-adapter", metavar="DIR",
        help="an adapter folder bundled as the tuned model's adapter (with --tune: instead of that run's), e.g. one "
        "probed on the bundled tuned model (`benchmarks/probe_curve.py --tuned`)",
    )  # fmt: skip
    bundle.add_argument("--augment", help="a finished interaction loop folder (its enhancement LoRAs, fused in order)")
    bundle.add_argument("--rounds", type=int_at_least(1), default=None, help="with --augment: bundle rounds 1..K")
    bundle.add_argument("--dest", default=None, help="weights root (default: the package's weights/ folder)")
    bundle.set_defaults(func=_bundle)


def add_demo_arguments(d) -> None:
    """The options of `discadapt demo` (and of `discadapt bench run --suite shapes`) on parser `d`."""
    d.add_argument("--quick", action="store_true", help="small settings: 8 prompts per category, 2 images each")
    d.add_argument("--out", default="demo-out", help="output folder: results.json, report.html (default demo-out)")
    d.add_argument("--categories", nargs="+", help="caption categories (default all)")
    d.add_argument("--n-prompts", type=int_at_least(1), help="prompts per category (default 40, quick 8)")
    d.add_argument("--images-per-prompt", type=int_at_least(1), help="images per prompt (default 5, quick 2)")
    d.add_argument("--steps", type=int_at_least(1), help="DDIM steps (default 25)")
    d.add_argument("--guidance", type=number_at_least(0), default=4.0, help="classifier-free guidance scale")
    d.add_argument("--seed", type=int_at_least(0), default=0, help="seed of prompts, noise and bootstrap")
    d.add_argument("--device", default="cpu")
    d.add_argument("--pipeline", help="local diffusers pipeline folder (default: the bundled shapes world)")
    d.add_argument("--prompts", help="prompt file, one caption of the shapes grammar a line (instead of drawn ones)")
    d.add_argument("--batch-size", type=int_at_least(1), default=50, help="images per pipeline call")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--no-probing", action="store_true", help="skip the hard-negative image-text matching table")
    d.add_argument("--no-correction", action="store_true", help="skip the self-correction rows (bundled adapter)")
    d.add_argument("--restart", action="store_true", help="discard an earlier demo in --out instead of continuing it")


def run_bench(argv: list[str]) -> int:
    """`discadapt bench run --suite shapes [options]`: `discadapt demo` with the options `argv` (the same numbers)."""
    from ...arguments import Parser

    parser = Parser(prog="discadapt bench run --suite shapes", description="the shapes world's demo as a bench suite")
    add_demo_arguments(parser)
    return _demo(parser.parse_args(argv))
