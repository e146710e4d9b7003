"""`discadapt` command line.

discadapt inspect --tiny                      blocks of the tiny test pipeline, their channels and sizes
discadapt inspect --pipeline DIR [--size 64]  the same for a local diffusers pipeline folder
discadapt demo [--quick] [--out DIR]          the shapes world's held-out prompts, judged by its oracle: tables,
                                              results.json and report.html
discadapt probe --pipeline DIR|--world ...    stage 1: train a discriminative adapter on a frozen pipeline
discadapt tune --pipeline DIR|--world ...     stage 2: LoRA + adapter with discriminative and denoising losses
discadapt world train --out RUN [--steps N]   retrain the shapes world's models (resumable)
discadapt world bundle RUN                    bundle them into the package
"""

from __future__ import annotations

import argparse
import logging
import sys

from .train.commands import add_commands as add_train_commands
from .worlds.shapes.commands import add_commands as add_world_commands


def _load_pipeline(args):
    if args.tiny:
        from .testing import tiny_sd_pipeline

        return tiny_sd_pipeline()
    if args.world:
        from .worlds.shapes import load_pipeline

        return load_pipeline()
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(args.pipeline, local_files_only=True)


def inspect(args) -> int:
    from .probe import FeatureProbe, block_names
    from .text import get_unet, pooled_dim

    pipe = _load_pipeline(args)
    unet = get_unet(pipe)
    layers = args.layers or block_names(unet)
    info = FeatureProbe(unet, layers).describe(args.size, args.size)
    size = args.size or unet.config.sample_size
    print(
        f"{type(pipe).__name__}: UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters, "
        f"latents {unet.config.in_channels}x{size}x{size}; text: pooled {pooled_dim(pipe)}, "
        f"tokens {unet.config.cross_attention_dim}"
    )
    print(f"{'layer':<28}{'channels':>9}{'size':>10}{'stride':>8}")
    for name, f in info.items():
        print(f"{name:<28}{f.channels:>9}{f'{f.height}x{f.width}':>10}{f.stride:>8}")
    return 0


def generate(args) -> int:
    from .adapter import DiscriminativeAdapter
    from .data import load_prompts
    from .sampling import SelfCorrectingPipeline, generate_to_folder

    if (args.adapter is None) != (args.correction_scale is None):
        raise ValueError("Self-correction needs both --adapter DIR and --correction-scale X (0 disables it).")
    prompts = load_prompts(args.prompts)
    pipe = _load_pipeline(args).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    if args.adapter:
        adapter = DiscriminativeAdapter.from_pretrained(args.adapter).to(args.device)
        pipe = SelfCorrectingPipeline.from_pipe(
            pipe,
            adapter,
            scale=args.correction_scale,
            mode=args.correction_mode,
            start=args.correction_start,
            stop=args.correction_stop,
            normalize=args.correction_normalize,
        )
    records = generate_to_folder(
        pipe,
        prompts,
        args.out,
        images_per_prompt=args.images_per_prompt,
        batch_size=args.batch_size,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
    )
    print(f"{len(records)} images for {len(prompts)} prompts in {args.out}")
    return 0


def demo(args) -> int:
    """`discadapt demo`: `worlds.shapes.demo.run_demo` on the bundled world (with the rows of its bundled adapter)
    or a `--pipeline` folder."""
    from .data import load_prompts
    from .worlds.shapes.demo import FULL, QUICK, run_demo
    from .worlds.shapes.rows import demo_rows, probing_table

    prompts = load_prompts(args.prompts) if args.prompts else None
    steps = args.steps or (QUICK if args.quick else FULL)["steps"]
    if args.pipeline is None:  # the bundled world, with the rows of every bundled model
        from .worlds.shapes.bundle import load_pipeline

        pipe = load_pipeline(device=args.device)
        methods, tables = demo_rows(
            pipe, steps, args.guidance, args.quick, not args.no_correction, not args.no_probing, args.device
        )
    else:
        pipe, methods = args.pipeline, {}
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
    )
    return 0


def _add_pipeline_source(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="local diffusers pipeline folder (loaded offline)")
    source.add_argument("--tiny", action="store_true", help="the tiny random test pipeline")
    source.add_argument("--world", action="store_true", help="the bundled shapes-world pipeline")


def _quiet_torchvision_fallback() -> None:
    """Drop transformers' notice that its image processors fall back to PIL without torchvision: discadapt keeps
    torchvision out on purpose (README, install notes), and diffusers' imports trigger the notice on every command."""
    logging.getLogger("transformers.utils.import_utils").addFilter(
        lambda record: "requires torchvision (not installed)" not in record.getMessage()
    )


def main(argv: list[str] | None = None) -> int:
    _quiet_torchvision_fallback()
    parser = argparse.ArgumentParser(
        prog="discadapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="list a pipeline's UNet blocks with the shapes of their features")
    _add_pipeline_source(p)
    p.add_argument("--size", type=int, default=None, help="latent height and width (default: the UNet's sample_size)")
    p.add_argument("--layers", nargs="+", help="module paths to describe (default: every top-level block)")
    p.set_defaults(func=inspect)

    g = sub.add_parser("generate", help="generate images for a prompt file (one prompt a line), resumably")
    _add_pipeline_source(g)
    g.add_argument("--prompts", required=True, help="prompt file, one prompt a line")
    g.add_argument("--out", required=True, help="output folder: images/ and generations.jsonl")
    g.add_argument("--lora", help="LoRA folder written by save_lora_weights (e.g. by `discadapt tune`)")
    g.add_argument("--adapter", help="discriminative adapter folder, for self-correction")
    g.add_argument("--correction-scale", type=float, help="self-correction step size eta (0: off)")
    g.add_argument("--correction-mode", choices=["plain", "reuse"], default="plain")
    g.add_argument("--correction-start", type=float, default=0.0, help="window start, fraction of the schedule")
    g.add_argument("--correction-stop", type=float, default=1.0, help="window stop, fraction of the schedule")
    g.add_argument("--correction-normalize", choices=["none", "unit", "clip"], default="none")
    g.add_argument("--steps", type=int, default=30, help="denoising steps")
    g.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    g.add_argument("--images-per-prompt", type=int, default=1)
    g.add_argument("--batch-size", type=int, default=4, help="prompts per pipeline call")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=generate)

    d = sub.add_parser("demo", help="the shapes world's held-out prompts judged by its oracle, with a report")
    d.add_argument("--quick", action="store_true", help="small settings: 8 prompts per category, 2 images each")
    d.add_argument("--out", default="demo-out", help="output folder: results.json, report.html (default demo-out)")
    d.add_argument("--categories", nargs="+", help="caption categories (default all)")
    d.add_argument("--n-prompts", type=int, help="prompts per category (default 40, quick 8)")
    d.add_argument("--images-per-prompt", type=int, help="images per prompt (default 5, quick 2)")
    d.add_argument("--steps", type=int, help="DDIM steps (default 25)")
    d.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    d.add_argument("--seed", type=int, default=0, help="seed of prompts, noise and bootstrap")
    d.add_argument("--device", default="cpu")
    d.add_argument("--pipeline", help="local diffusers pipeline folder (default: the bundled shapes world)")
    d.add_argument("--prompts", help="prompt file, one caption of the shapes grammar a line (instead of drawn ones)")
    d.add_argument("--batch-size", type=int, default=50, help="images per pipeline call")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.add_argument("--no-probing", action="store_true", help="skip the hard-negative image-text matching table")
    d.add_argument("--no-correction", action="store_true", help="skip the self-correction rows (bundled adapter)")
    d.set_defaults(func=demo)

    add_train_commands(sub)
    add_world_commands(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input; missing files (e.g. bundled weights)
        print(f"discadapt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
