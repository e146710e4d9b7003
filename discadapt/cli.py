"""`discadapt` command line.

discadapt inspect --tiny                      blocks of the tiny test pipeline, their channels and sizes
discadapt inspect --pipeline DIR [--size 64]  the same for a local diffusers pipeline folder
"""

from __future__ import annotations

import argparse
import sys


def _load_pipeline(args):
    if args.tiny:
        from .testing import tiny_sd_pipeline

        return tiny_sd_pipeline()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="discadapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="list a pipeline's UNet blocks with the shapes of their features")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="local diffusers pipeline folder (loaded offline)")
    source.add_argument("--tiny", action="store_true", help="the tiny random test pipeline")
    p.add_argument("--size", type=int, default=None, help="latent height and width (default: the UNet's sample_size)")
    p.add_argument("--layers", nargs="+", help="module paths to describe (default: every top-level block)")
    p.set_defaults(func=inspect)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"discadapt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
