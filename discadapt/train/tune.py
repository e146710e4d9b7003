"""Stage 2 of DPT, tuning: LoRA on the UNet's attention projections, trained with the adapter on ITM + REC +
the denoising loss (which keeps the model generative).

The LoRA is peft's, added with `unet.add_adapter(LoraConfig(...))` (gaussian init, seeded), trained in float32, and
saved in diffusers' format with its adapter metadata (so a `lora_alpha` different from the rank survives the
reload): a fresh pipeline reproduces the tuned one with `pipe.load_lora_weights(out_dir / "lora")`, and
`pipe.fuse_lora()` merges it into the UNet weights.

Example:
    >>> from discadapt.train import TuneConfig, train_tune
    >>> config = TuneConfig(steps=2000, lora_rank=8, lora_alpha=8, denoise_weight=1.0)
    >>> result = train_tune(pipe, dataset, "runs/tune", config, adapter=stage1_adapter)
    >>> fresh.load_lora_weights(result["lora"])
"""

from __future__ import annotations

import os

import torch

from ..adapter import DiscriminativeAdapter
from ..text import get_unet
from .config import TuneConfig
from .loop import run

__all__ = ["train_tune", "add_lora", "save_lora", "LORA_WEIGHTS"]

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def add_lora(unet, config: TuneConfig, seed: int = 0) -> None:
    """Add a peft LoRA adapter named "default" to `unet` (seeded gaussian init), as `config` describes.

    Raises:
        ValueError: the UNet already carries a LoRA, or `config.lora_targets` names no module of it.
    """
    from peft import LoraConfig

    if getattr(unet, "peft_config", None):
        raise ValueError(
            f"The UNet already carries LoRA adapters {sorted(unet.peft_config)}; merge them first "
            "(pipe.fuse_lora(); pipe.unload_lora_weights()) or pass a pipeline without them."
        )
    names = [name for name, _ in unet.named_modules()]
    missing = [t for t in config.lora_targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(
            f"`lora_targets` names {missing}, which match no module of this UNet; attention projections are "
            "usually 'to_q', 'to_k', 'to_v', 'to_out.0'."
        )
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=list(config.lora_targets),
        )
    )


def save_lora(pipe, out_dir: str | os.PathLike) -> None:
    """Write the UNet's LoRA in diffusers' format (`pytorch_lora_weights.safetensors`, with adapter metadata)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = get_unet(pipe)
    if not getattr(unet, "peft_config", None):
        raise ValueError("The pipeline's UNet has no LoRA to save; train one with train_tune first.")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    layers = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in layers.items()}
    type(pipe).save_lora_weights(
        out_dir,
        unet_lora_layers=layers,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        weight_name=LORA_WEIGHTS,
        safe_serialization=True,
    )


def train_tune(
    pipe,
    dataset,
    out_dir: str | os.PathLike,
    config: TuneConfig | None = None,
    *,
    adapter: DiscriminativeAdapter | None = None,
    eval_dataset=None,
    eval_timesteps=None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator=None,
) -> dict:
    """Tune a pipeline's UNet with LoRA together with a discriminative adapter (stage 2), or resume that training.

    Args:
        pipe: a diffusers pipeline (SD 1.x/2.x, SDXL). Its UNet gets the LoRA in place (left active and unfused
            afterwards, so `pipe` is the tuned model); VAE and text encoder(s) stay frozen.
        dataset, out_dir, eval_dataset, eval_timesteps, resume, stop_after, progress, accelerator: as in
            `train_probe`.
        config (`TuneConfig`, *optional*): settings; defaults to `TuneConfig()`.
        adapter (`DiscriminativeAdapter`, *optional*): usually the stage-1 adapter; a new one by default.

    Returns:
        `dict`: as `train_probe`, plus `lora` (the folder to pass to `pipe.load_lora_weights`, when done).
    """
    config = TuneConfig() if config is None else config
    if not isinstance(config, TuneConfig):
        raise ValueError(f"`config` is a {type(config).__name__}; train_tune takes a TuneConfig.")
    return run(
        "tune",
        pipe,
        dataset,
        out_dir,
        config,
        adapter=adapter,
        eval_dataset=eval_dataset,
        eval_timesteps=eval_timesteps,
        resume=resume,
        stop_after=stop_after,
        progress=progress,
        accelerator=accelerator,
        prepare_unet=lambda unet: add_lora(unet, config, seed=config.seed + 1),
    )
