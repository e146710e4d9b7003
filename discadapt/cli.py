"""`discadapt` command line.

discadapt inspect --tiny                      blocks of the tiny test pipeline, their channels and sizes
discadapt inspect --pipeline DIR [--size 64]  the same for a local diffusers pipeline folder
discadapt generate --pipeline DIR ...         images for a prompt file, resumably (optionally self-corrected)
discadapt probe --pipeline DIR|--world ...    stage 1: train a discriminative adapter on a frozen pipeline
discadapt tune --pipeline DIR|--world ...     stage 2: LoRA + adapter with discriminative and denoising losses

Plug-ins (`discadapt.plugins`) add commands and pipeline sources; the shapes world adds:
discadapt demo [--quick] [--out DIR]          the shapes world's held-out prompts, judged by its oracle: tables,
                                              results.json and report.html
discadapt world train --out RUN [--steps N]   retrain the shapes world's models (resumable)
discadapt world bundle RUN                    bundle them into the package
and the pipeline source `--world` (the bundled shapes-world pipeline).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .plugins import add_pipeline_arguments, pipeline_from_args, registry
from .train.commands import add_commands as add_train_commands


def inspect(args) -> int:
    from .probe import FeatureProbe, block_names
    from .text import get_unet, pooled_dim

    pipe = pipeline_from_args(args)
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
    pipe = pipeline_from_args(args).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    if args.adapter:
        adapter = DiscriminativeAdapter.from_pretrained(args.adapter).to(args.device)
        pipe = SelfCorrectingPipeline.from_pipe(
            pipe,
            adapter=adapter,
            correction=dict(
                scale=args.correction_scale,
                mode=args.correction_mode,
                start=args.correction_start,
                stop=args.correction_stop,
                normalize=args.correction_normalize,
            ),
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
    add_pipeline_arguments(p)
    p.add_argument("--size", type=int, default=None, help="latent height and width (default: the UNet's sample_size)")
    p.add_argument("--layers", nargs="+", help="module paths to describe (default: every top-level block)")
    p.set_defaults(func=inspect)

    g = sub.add_parser("generate", help="generate images for a prompt file (one prompt a line), resumably")
    add_pipeline_arguments(g)
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

    add_train_commands(sub)
    for add in registry().commands:
        add(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # bad input; missing files (e.g. bundled weights)
        print(f"discadapt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
