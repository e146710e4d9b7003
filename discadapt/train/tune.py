"""Stage 2 of DPT, tuning: LoRA on the UNet's attention projections, trained with the adapter on ITM + REC +
the denoising loss (which keeps the model generative).

The LoRA is peft's, added with `unet.add_adapter(LoraConfig(...))` (gaussian init, seeded), trained in float32, and
saved in diffusers' format with its adapter metadata (so a `lora_alpha` different from the rank survives the
reload): a fresh pipeline reproduces the tuned one with `pipe.load_lora_weights(out_dir / "lora")`, and
`pipe.fuse_lora()` merges it into the UNet weights.

`TuneObjective` is stage 1's `ProbeObjective` (`probe.py`) with the LoRA added before the frozen weights are cast,
its own parameter group (`lora_lr`), gradients through the UNet, the denoising loss, and `lora/` among the outputs;
the training engine (`engine.run_training`) runs it. With `lora_ema_decay`, diffusers' `EMAModel` averages the LoRA
weights after every step (its state checkpointed with the run) and `lora/` holds the average.

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
from .engine import make_accelerator, run_training
from .objective import DiscriminativeLoss
from .probe import ProbeObjective

__all__ = ["LORA_WEIGHTS", "TuneObjective", "add_lora", "save_lora", "train_tune"]

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
_EMA = "lora_ema."  # checkpoint keys of the LoRA's moving average


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
    # diffusers renames only the attention projections' lora_A / lora_B to lora.down / lora.up, and its loader reads
    # a file as one format (by its first key): a LoRA on other layers too (feed-forward, convolutions) must be
    # written in that format throughout, or the loader silently drops one of the two kinds of keys
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    uniform = lambda name: name.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up.")  # noqa: E731
    layers = {uniform(name): t.detach().to("cpu", torch.float32).contiguous() for name, t in layers.items()}
    type(pipe).save_lora_weights(
        out_dir,
        unet_lora_layers=layers,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        weight_name=LORA_WEIGHTS,
        safe_serialization=True,
    )


class TuneObjective(ProbeObjective):
    """Stage 2 as an engine objective: `ProbeObjective` plus a LoRA on the UNet (seeded by `config.seed + 1`, float32
    master weights, its own learning rate `lora_lr`), the UNet's gradients, the denoising loss, and `lora/` at the
    end.

    Args:
        as `ProbeObjective`, with a `TuneConfig`.
    """

    name = "tune"
    outputs = ("adapter", "lora", "eval")
    config_class = TuneConfig
    train_unet = True

    ema = None  # diffusers' EMAModel of the LoRA weights, with `config.lora_ema_decay`

    def prepare_unet(self, unet) -> None:
        add_lora(unet, self.config, seed=self.config.seed + 1)
        if self.config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()

    def _lora(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, p) for name, p in get_unet(self.pipe).named_parameters() if p.requires_grad]

    def setup(self, accelerator) -> DiscriminativeLoss:
        module = super().setup(accelerator)
        if self.config.lora_ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel([p for _, p in self._lora()], decay=self.config.lora_ema_decay)
        return module

    def param_groups(self, module: DiscriminativeLoss) -> list[dict]:
        lora = [p for _, p in self._lora()]
        return super().param_groups(module) + [{"params": lora, "lr": self.config.lora_lr or self.config.lr}]

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.step([p for _, p in self._lora()])

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        if self.ema is None:
            return {}, {}
        state = self.ema.state_dict()
        shadow = state.pop("shadow_params")
        return {_EMA + name: t for (name, _), t in zip(self._lora(), shadow)}, {"lora_ema": state}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if self.ema is not None:
            shadow = [tensors[_EMA + name].to(p.device) for name, p in self._lora()]
            self.ema.load_state_dict({**meta["lora_ema"], "shadow_params": shadow})

    def save_outputs(self, run, step: int) -> dict:
        outputs = super().save_outputs(run, step)
        lora = [p for _, p in self._lora()]
        if self.ema is not None:  # save the average, then put the last weights back
            self.ema.store(lora)
            self.ema.copy_to(lora)
        try:
            outputs["lora"] = str(run.write_output("lora", lambda folder: save_lora(self.pipe, folder), {"step": step}))
        finally:
            if self.ema is not None:
                self.ema.restore(lora)
        return outputs


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
    objective = TuneObjective(
        pipe, dataset, config, adapter=adapter, eval_dataset=eval_dataset, eval_timesteps=eval_timesteps
    )
    if accelerator is None:
        accelerator = make_accelerator(config.mixed_precision)
    return run_training(
        objective, out_dir, resume=resume, stop_after=stop_after, progress=progress, accelerator=accelerator
    )
