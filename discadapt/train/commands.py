"""`discadapt probe` and `discadapt tune`: stage 1 and stage 2 training from the command line.

discadapt probe (--pipeline DIR | --world | --tiny) --out DIR  DATA [--steps N --batch-size B --lr LR ...]
discadapt tune  (--pipeline DIR | --world | --tiny) --out DIR  DATA [--lora-rank R --lora-alpha A ...]

DATA is one or more of (mixed with ConcatDataset):
    --captions JSON --images DIR [--negatives JSON]   COCO captions (+ NegCLIP-style negatives)    ITM
    --refs JSON --ref-images DIR                       MDETR / RefCOCO referring expressions         REC
    --folder DIR                                       images with a captions file                   ITM
and what plug-ins add (`discadapt.plugins`): the shapes world's `--shapes N` (N ShapeWorld train examples, ITM +
REC); with its `--world` pipeline, `--shapes 100000` unless other data are given, and evaluation on
`--eval-shapes` (default 200) test_id and test_ood examples at the end (eval.json).

Several processes: `accelerate launch --multi_gpu --num_processes 2 -m discadapt.train.commands probe ...`; on CPUs
prefix it with `ACCELERATE_USE_CPU=1` (torchrun's processes, gloo: accelerate 1.15's `--cpu` launcher starts several
processes only through mpirun).
`add_commands(subparsers)` registers both subcommands on the `discadapt` parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..arguments import Parser, run_command
from ..plugins import add_pipeline_arguments, pipeline_from_args, registry

__all__ = ["add_commands", "add_data_arguments", "datasets_from_args", "main"]


def datasets_from_args(args) -> list:
    """The datasets the data flags (`add_data_arguments`) name, and those plug-ins add."""
    from ..data import CaptionedFolder, CocoCaptions, ReferringExpressions

    found = []
    if args.captions:
        if not args.images:
            raise ValueError("`--captions` needs `--images DIR`, the folder holding the COCO images.")
        found.append(CocoCaptions(args.captions, args.images, negatives=args.negatives))
    elif args.negatives:
        raise ValueError("`--negatives` goes with `--captions JSON --images DIR`; pass those too.")
    if args.refs:
        if not args.ref_images:
            raise ValueError("`--refs` needs `--ref-images DIR`, the folder holding the referring images.")
        found.append(ReferringExpressions(args.refs, args.ref_images))
    if args.folder:
        found.append(CaptionedFolder(args.folder))
    for data in registry().training_data:
        found += data.datasets(args, list(found))
    if not found:
        raise ValueError(
            "No training data: pass --captions JSON --images DIR, --refs JSON --ref-images DIR, --folder DIR or "
            "--shapes N (or --world for the shapes world)."
        )
    return found


def _config(args, stage: str):
    from .config import ProbeConfig, TuneConfig

    try:
        adapter_config = json.loads(args.adapter_config) if args.adapter_config else {}
    except ValueError as err:
        raise ValueError(
            f"`--adapter-config` is {args.adapter_config!r}, not valid JSON ({err}); pass a JSON object, e.g. "
            "'{\"hidden_size\": 128}' (quoted for the shell)."
        ) from None
    if not isinstance(adapter_config, dict):
        raise ValueError(
            f"`--adapter-config` is {args.adapter_config!r}; pass a JSON object, e.g. '{{\"hidden_size\": 128}}'."
        )
    common = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        max_grad_norm=None if args.max_grad_norm == 0 else args.max_grad_norm,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.num_workers,
        timesteps=tuple(args.timesteps) if args.timesteps else None,
        timestep_range=tuple(args.timestep_range) if args.timestep_range else None,
        layers=tuple(args.layers) if args.layers else None,
        adapter_config=adapter_config,
        itm_weight=args.itm_weight,
        rec_weight=args.rec_weight,
        num_neg_captions=args.num_neg_captions,
        num_neg_images=args.num_neg_images,
        random_negatives=not args.no_random_negatives,
        in_batch_negatives=args.in_batch_negatives,
        resolution=args.resolution,
        pair_batch_size=args.pair_batch_size,
    )
    if stage == "probe":
        return ProbeConfig(**common)
    return TuneConfig(
        **common,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_rank if args.lora_alpha is None else args.lora_alpha,
        lora_targets=tuple(args.lora_targets),
        lora_lr=args.lora_lr,
        denoise_weight=args.denoise_weight,
        snr_gamma=args.snr_gamma,
        contrast_weight=args.contrast_weight,
        contrast_temperature=args.contrast_temperature,
        denoise_timestep_range=tuple(args.denoise_timestep_range) if args.denoise_timestep_range else None,
        caption_dropout=args.caption_dropout,
        grounding_weight=args.grounding_weight,
        lora_ema_decay=args.lora_ema_decay,
    )


def _format_eval(results: dict) -> str:
    lines = [f"{'set':<10}{'category':<13}{'ITM text':>10}{'ITM image':>11}{'REC@0.5':>9}"]
    for split, table in results.items():
        for category, row in table.items():
            cells = ["-" if row[k] is None else f"{100 * row[k]:.1f}%" for k in ("itm_text", "itm_image", "rec")]
            lines.append(f"{split:<10}{category:<13}{cells[0]:>10}{cells[1]:>11}{cells[2]:>9}")
    return "\n".join(lines)


def _run(args, stage: str) -> int:
    from torch.utils.data import ConcatDataset

    from ..adapter import DiscriminativeAdapter
    from .engine import make_accelerator
    from .probe import train_probe
    from .tune import train_tune

    config = _config(args, stage)  # checked before anything is loaded
    datasets = datasets_from_args(args)
    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    eval_sets = {name: d for data in registry().training_data for name, d in data.eval_datasets(args).items()}
    pipe = pipeline_from_args(args)
    adapter = None
    if args.adapter:
        if not Path(args.adapter).is_dir():
            raise ValueError(f"`--adapter` is {args.adapter!r}, which is not a folder; pass a saved adapter folder.")
        adapter = DiscriminativeAdapter.from_pretrained(args.adapter)
    accelerator = make_accelerator(config.mixed_precision)
    result = (train_probe if stage == "probe" else train_tune)(
        pipe,
        dataset,
        args.out,
        config,
        adapter=adapter,
        eval_dataset=eval_sets or None,
        eval_timesteps=args.eval_timesteps,
        resume=args.resume,
        stop_after=args.stop_after,
        progress=not args.no_progress,
        accelerator=accelerator,
    )
    if accelerator.is_main_process:
        keys = ("objective", "step", "done", "losses", "seconds_per_step", "adapter", "lora")
        print(json.dumps({k: result.get(k) for k in keys}))
        if result.get("eval"):
            print(_format_eval(result["eval"]))
    return 0


def probe(args) -> int:
    """`discadapt probe`: stage 1 (frozen UNet, the adapter trains)."""
    return _run(args, "probe")


def tune(args) -> int:
    """`discadapt tune`: stage 2 (LoRA on the UNet plus the adapter)."""
    return _run(args, "tune")


def add_data_arguments(p: argparse.ArgumentParser):
    """The data flags (COCO captions with negatives, referring expressions, a captioned folder, plug-ins' data) on
    `p`, as an argument group."""
    data = p.add_argument_group("data (one or more)")
    data.add_argument("--captions", help="COCO captions JSON (ITM)")
    data.add_argument("--images", help="image folder of --captions")
    data.add_argument("--negatives", help="hard negatives JSON of --captions (format in discadapt.data.coco)")
    data.add_argument("--refs", help="MDETR/RefCOCO referring-expression JSON (REC)")
    data.add_argument("--ref-images", help="image folder of --refs")
    data.add_argument("--folder", help="folder of images with a captions file (ITM with random negatives)")
    for plugin in registry().training_data:
        plugin.add_arguments(data)
    return data


def _add_common(p: argparse.ArgumentParser) -> None:
    add_pipeline_arguments(p)
    p.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, adapter/ (and lora/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    data = add_data_arguments(p)
    data.add_argument("--eval-timesteps", type=int, nargs="+", help="evaluation timesteps (default T // 2)")
    opt = p.add_argument_group("training")
    opt.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    opt.add_argument("--batch-size", type=int, default=8, help="samples per process per micro-step (default 8)")
    opt.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    opt.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    opt.add_argument("--weight-decay", type=float, default=1e-2)
    opt.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warmup steps")
    opt.add_argument("--lr-schedule", choices=["constant", "linear", "cosine"], default="constant")
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    opt.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations (tune)")
    opt.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    opt.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step; resume later")
    opt.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    opt.add_argument("--no-progress", action="store_true", help="no progress bar")
    model = p.add_argument_group("adapter and losses")
    model.add_argument("--layers", nargs="+", help="UNet blocks the adapter reads (default up_blocks.0)")
    model.add_argument("--adapter", help="start from this saved adapter folder (e.g. stage 1's out/adapter)")
    model.add_argument("--adapter-config", help="JSON of other adapter arguments, e.g. '{\"hidden_size\": 128}'")
    model.add_argument("--timesteps", type=int, nargs="+", help="training timesteps to draw from (default: all)")
    model.add_argument("--timestep-range", type=int, nargs=2, metavar=("LOW", "HIGH"), help="draw from [LOW, HIGH)")
    model.add_argument("--itm-weight", type=float, default=1.0)
    model.add_argument("--rec-weight", type=float, default=1.0)
    model.add_argument("--num-neg-captions", type=int, default=3, help="negative captions per sample (default 3)")
    model.add_argument("--num-neg-images", type=int, default=1, help="negative images per sample (default 1)")
    model.add_argument("--no-random-negatives", action="store_true", help="hard negatives only, no random fill")
    model.add_argument("--in-batch-negatives", action="store_true", help="add in-batch negatives (B^2 pairs)")
    model.add_argument("--resolution", type=int, help="image side (default: the UNet's sample size x VAE factor)")
    model.add_argument("--pair-batch-size", type=int, help="(image, text) pairs per UNet call (default: all)")


def add_commands(subparsers) -> None:
    """Register `probe` and `tune` on an argparse `subparsers` object (each with `func(args) -> int`)."""
    p = subparsers.add_parser("probe", help="stage 1: train a discriminative adapter on a frozen UNet")
    _add_common(p)
    p.set_defaults(func=probe)

    t = subparsers.add_parser("tune", help="stage 2: LoRA on the UNet plus the adapter (ITM + REC + denoising)")
    _add_common(t)
    t.add_argument("--lora-rank", type=int, default=4, help="LoRA rank r (default 4)")
    t.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank)")
    t.add_argument("--lora-targets", nargs="+", default=["to_q", "to_k", "to_v", "to_out.0"])
    t.add_argument("--lora-lr", type=float, help="learning rate of the LoRA (default --lr)")
    t.add_argument("--denoise-weight", type=float, default=1.0, help="weight of the denoising loss (default 1)")
    t.add_argument("--snr-gamma", type=float, help="min-SNR gamma of the denoising loss (default: plain MSE)")
    t.add_argument(
        "--caption-dropout", type=float, default=0.0,
        help="share of denoising pairs given the empty caption (CFG's unconditional branch), e.g. 0.1 (default 0)",
    )  # fmt: skip
    t.add_argument(
        "--lora-ema-decay", type=float, help="keep an EMA of the LoRA weights and save it, e.g. 0.998 (default: off)"
    )
    t.add_argument(
        "--contrast-weight", type=float, default=0.0,
        help="weight of the denoising-contrast loss: the caption must denoise better than its negatives (default 0)",
    )  # fmt: skip
    t.add_argument(
        "--grounding-weight", type=float, default=0.0,
        help="weight of the cross-attention grounding loss on items with boxes for their words (default 0)",
    )  # fmt: skip
    t.add_argument(
        "--contrast-temperature", type=float, default=0.05, help="its temperature, in log error ratio (default 0.05)"
    )
    t.add_argument(
        "--denoise-timestep-range", type=int, nargs=2, metavar=("LOW", "HIGH"),
        help="timesteps [LOW, HIGH) of the denoising loss and contrast (default: all; the adapter's: --timestep-range)",
    )  # fmt: skip
    t.set_defaults(func=tune)


def main(argv: list[str] | None = None) -> int:
    """`python -m discadapt.train.commands probe|tune ...` (what `accelerate launch -m` runs)."""
    parser = Parser(prog="discadapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_command(args, args.command)


if __name__ == "__main__":
    sys.exit(main())
