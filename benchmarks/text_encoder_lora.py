"""Issue 12, hypothesis 5, the words: does tuning the *text encoder* help where the UNet's LoRA stops?

`position_grounding.py` found that where a layout is chosen the words decide, and the world's text encoder (causal,
as CLIP's) cannot tell the first phrase which half its relation plans. Stage 2 freezes the text encoder; here a LoRA
on its attention projections (rank and learning rate of the UNet's) trains too, with the UNet's LoRA
(`--text-only`: the text encoder's alone), on top of the bundled tuned model with the denoising loss, as the
`t-d-s1` lane of `tune_sweep.py` (the control on top of the bundle: same data, seed and settings). Then base, the
bundle and the run on `tuned_variants.py`'s train-split prompts (the LoRA left active, unfused: the same images a
fused one gives).

    python benchmarks/text_encoder_lora.py --out runs/text-lora/both-d [--text-only] --prompts-per-category 120
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from _protocol import add_arguments, multi_mean, train_suite  # noqa: E402
from tuned_variants import methods, pipelines, rows  # noqa: E402

from discadapt.bench import run_suite  # noqa: E402
from discadapt.scoring import encode_images  # noqa: E402
from discadapt.text import encode_text  # noqa: E402
from discadapt.train import TuneConfig  # noqa: E402
from discadapt.train.engine import run_training  # noqa: E402
from discadapt.train.tune import TuneObjective  # noqa: E402
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems  # noqa: E402
from discadapt.worlds.shapes.bundle import load_lora, load_pipeline  # noqa: E402

TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP text attention projections


class TextEncoderTune(TuneObjective):
    """Stage 2 with a peft LoRA on the text encoder too (its parameters join the LoRA's group and checkpoints), the
    prompts encoded with gradients; with `text_only`, the UNet's LoRA stays at its initial (zero) update."""

    text_only = False

    def prepare_unet(self, unet) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        super().prepare_unet(unet)
        if self.text_only:
            unet.requires_grad_(False)
        config = self.config
        torch.manual_seed(config.seed + 2)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                          target_modules=list(TEXT_TARGETS))  # fmt: skip
        text_encoder = inject_adapter_in_model(lora, self.pipe.text_encoder)
        for name, param in text_encoder.named_parameters():
            param.requires_grad_("lora_" in name)
            if param.requires_grad:
                param.data = param.data.float()

    def setup(self, accelerator):
        module = super().setup(accelerator)
        module.add_module("text_encoder", self.pipe.text_encoder)  # its LoRA in the engine's trainable parameters
        return module

    def _lora(self) -> list[tuple[str, torch.nn.Parameter]]:
        text = [("text_encoder." + n, p) for n, p in self.pipe.text_encoder.named_parameters() if p.requires_grad]
        return super()._lora() + text

    def loss(self, model, batch, step: int, accelerator) -> dict[str, torch.Tensor]:
        batch = batch.to(accelerator.device)
        with torch.no_grad():
            latents = encode_images(self.pipe, batch.images)
        text = encode_text(self.pipe, batch.texts)  # with gradients, for the text encoder's LoRA
        return model(latents, text, batch, max(float(sum(len(b) for b in batch.rec_boxes)), 1.0))

    def save_outputs(self, run, step: int) -> dict:
        return {}  # measured in this process (`main`); nothing to keep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--text-only", action="store_true", help="the text encoder's LoRA alone")
    add_arguments(p, prompts_per_category=120)
    args = p.parse_args(argv)
    set_threads(args.threads)
    pipe = load_lora(load_pipeline())
    # the t-d-s1 lane's settings
    config = TuneConfig(
        steps=args.steps, batch_size=16, lr=1e-4, lora_lr=1e-3, lr_warmup_steps=50, timestep_range=(0, 500),
        num_neg_captions=3, num_neg_images=1, random_negatives=False, lora_rank=8, lora_alpha=8, itm_weight=0,
        rec_weight=0, contrast_weight=0, seed=1,
    )  # fmt: skip
    objective = TextEncoderTune(pipe, ShapeWorldItems(100_000, split="train", seed=1), config)
    objective.text_only = args.text_only
    run_training(objective, args.out, resume=(Path(args.out) / "train_config.json").exists(), progress=False)
    pipe.set_progress_bar_config(disable=True)
    pipes = {**pipelines({"bundled": "bundled"}), "text": pipe}
    out = Path(args.out) / "train"
    train = run_suite(train_suite(args), methods(rows(pipes), pipes), out, batch_size=48, progress=False)
    for name, found in train["methods"].items():
        difference = found.get("difference_to_base", {}).get("all")
        print(f"{name:<10} multi-object mean {multi_mean(found):.3f}" + (
            f", to base {difference['estimate']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}]"
            if difference else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
