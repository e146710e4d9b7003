"""`discadapt` command line.

discadapt inspect --tiny                      blocks of the tiny test pipeline, their channels and sizes
discadapt inspect --pipeline DIR [--size 64]  the same for a local diffusers pipeline folder
discadapt generate --pipeline DIR ...         images for a prompt file, resumably (optionally self-corrected)
discadapt probe --pipeline DIR|--world ...    stage 1: train a discriminative adapter on a frozen pipeline
discadapt tune --pipeline DIR|--world ...     stage 2: LoRA + adapter with discriminative and denoising losses
discadapt augment --pipeline DIR|--world --critic C --prompts F --out DIR
                                              the interaction loop (ArtAug): critics, kept images, fused LoRAs
discadapt bench run --suite FILES|shapes --pipeline DIR --metric NAME=PATH ... --out DIR
                                              benchmark evaluations: images, scores, results.json, report.html
discadapt bench compare A/results.json B/results.json   paired differences of two runs

Plug-ins (`discadapt.plugins`) add commands and pipeline sources; the shapes world adds:
discadapt demo [--quick] [--out DIR]          the shapes world's held-out prompts, judged by its oracle: tables,
                                              results.json and report.html
discadapt world train --out RUN [--steps N]   retrain the shapes world's models (resumable)
discadapt world bundle RUN                    bundle them into the package
and the pipeline source `--world` (the bundled shapes-world pipeline).

Errors: every command checks its output folder (--out, --dest) and --device before any work, and reports a problem
as one line, `discadapt <command>: error: what is wrong; the fix`, with exit code 2 (bad input) or 1 (anything
else); `discadapt --debug <command> ...` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from .arguments import Parser, int_at_least, number_at_least, run_command
from .bench.commands import add_commands as add_bench_commands
from .interaction.commands import add_commands as add_augment_commands
from .plugins import add_pipeline_arguments, pipeline_from_args, registry, source_name
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
    from .loading import load_lora
    from .sampling import SelfCorrectingPipeline, generate_to_folder

    # 1. arguments and files, before anything is loaded
    if (args.adapter is None) != (args.correction_scale is None):
        raise ValueError("Self-correction needs both --adapter DIR and --correction-scale X (0 disables it).")
    if not 0 <= args.correction_start <= args.correction_stop <= 1:
        raise ValueError(
            f"The correction window is --correction-start {args.correction_start}, --correction-stop "
            f"{args.correction_stop}; pass 0 <= start <= stop <= 1."
        )
    if not 0 <= args.layout_start <= args.layout_stop <= 1:
        raise ValueError(
            f"The layout term's window is --layout-start {args.layout_start}, --layout-stop {args.layout_stop}; "
            "pass 0 <= start <= stop <= 1."
        )
    prompts = load_prompts(args.prompts)
    # 2. the pipeline, its LoRA and adapter, the layout term
    pipe = pipeline_from_args(args)
    if args.lora:
        load_lora(pipe, args.lora, "--lora")
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    adapter, correction, layout = None, None, None
    if args.layout_scale:
        layout = {"scale": args.layout_scale, "start": args.layout_start, "stop": args.layout_stop,
                  "normalize": "unit", "positions": not args.layout_pairs_only}  # fmt: skip
    if args.adapter:
        adapter = DiscriminativeAdapter.from_pretrained(args.adapter).to(args.device)
        correction = dict(
            scale=args.correction_scale,
            mode=args.correction_mode,
            start=args.correction_start,
            stop=args.correction_stop,
            normalize=args.correction_normalize,
            every=args.correction_every,
        )
    if adapter is not None or layout is not None:
        pipe = SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction=correction, layout=layout)
    # 3. the images, resumably: a folder of other settings is refused (`generate_to_folder`)
    absolute = lambda path: path and os.path.abspath(path)  # noqa: E731  (a rerun may name them otherwise)
    source = absolute(args.pipeline) or source_name(args)
    records = generate_to_folder(
        pipe,
        prompts,
        args.out,
        images_per_prompt=args.images_per_prompt,
        batch_size=args.batch_size,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        settings={"pipeline": source, "lora": absolute(args.lora), "adapter": absolute(args.adapter)},
    )
    print(f"{len(records)} images for {len(prompts)} prompts in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="discadapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, and warnings in full")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="list a pipeline's UNet blocks with the shapes of their features")
    add_pipeline_arguments(p)
    p.add_argument(
        "--size", type=int_at_least(1), default=None, help="latent height and width (default: the UNet's sample_size)"
    )
    p.add_argument("--layers", nargs="+", help="module paths to describe (default: every top-level block)")
    p.set_defaults(func=inspect)

    g = sub.add_parser("generate", help="generate images for a prompt file (one prompt a line), resumably")
    add_pipeline_arguments(g)
    g.add_argument("--prompts", required=True, help="prompt file, one prompt a line")
    g.add_argument("--out", required=True, help="output folder: images/, manifest.json and generations.jsonl")
    g.add_argument("--lora", help="LoRA folder written by save_lora_weights (e.g. by `discadapt tune`)")
    g.add_argument("--adapter", help="discriminative adapter folder, for self-correction")
    g.add_argument("--correction-scale", type=number_at_least(0), help="self-correction step size eta (0: off)")
    g.add_argument("--correction-mode", choices=["plain", "reuse", "input"], default="plain")
    g.add_argument("--correction-start", type=float, default=0.0, help="window start, fraction of the schedule")
    g.add_argument("--correction-stop", type=float, default=1.0, help="window stop, fraction of the schedule")
    g.add_argument("--correction-normalize", choices=["none", "unit", "clip"], default="none")
    g.add_argument(
        "--correction-every", type=int_at_least(1), default=1, help="correct every N-th step of the window (default 1)"
    )
    g.add_argument(
        "--layout-scale", type=number_at_least(0), default=0.0,
        help="the layout term's step size (0: off): spatial prompts' phrases steered to their halves of the image",
    )  # fmt: skip
    g.add_argument("--layout-start", type=float, default=0.2, help="the layout term's window start (default 0.2)")
    g.add_argument("--layout-stop", type=float, default=0.6, help="the layout term's window stop (default 0.6)")
    g.add_argument(
        "--layout-pairs-only", action="store_true", help="leave one phrase's position ('A on the left') alone"
    )
    g.add_argument("--steps", type=int_at_least(1), default=30, help="denoising steps")
    g.add_argument(
        "--guidance", type=number_at_least(0), default=7.5, help="classifier-free guidance scale (<= 1: off)"
    )
    g.add_argument("--images-per-prompt", type=int_at_least(1), default=1)
    g.add_argument("--batch-size", type=int_at_least(1), default=4, help="prompts per pipeline call")
    g.add_argument("--seed", type=int_at_least(0), default=0)
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=generate)

    add_train_commands(sub)
    add_augment_commands(sub)
    add_bench_commands(sub)
    for add in registry().commands:
        add(sub)

    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "extra_options", False):
        parser.parse_args(argv)  # the usual one-line error naming the unknown options
    args.rest = rest
    name = " ".join(str(part) for part in (args.command, getattr(args, "world_command", None)) if part)
    return run_command(args, name)


if __name__ == "__main__":
    sys.exit(main())
