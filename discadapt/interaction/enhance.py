"""The enhancement module of the interaction loop: a LoRA trained on the kept images, then merged into the UNet's
weights so that inference costs nothing extra (ArtAug, Duan et al. 2024).

`EnhanceObjective` is a training-engine objective (`train.engine.run_training`): the UNet, VAE and text encoders are
frozen, peft's LoRA is added to the UNet's attention projections (`train.tune.add_lora`), and each micro-batch is a
pure function of its index: `batch_size` pairs drawn with replacement, a uniform timestep t in `timestep_range` and
Gaussian noise eps each, loss `|| eps_theta(x_t, t, c) - target ||^2` (`losses.denoising_loss`, epsilon or
v-prediction as the scheduler says). With `objective="dpo"` each kept image comes with a rejected one of the same
prompt (the critic's worst), both noised with the same eps and t, and the loss is Diffusion-DPO's
(`losses.preference`) against the UNet with its LoRA switched off as the reference. Images are encoded once (VAE
posterior mode) and prompts once, before training.
The run folder resumes like every engine run; its output `lora/` is in diffusers' format.

`fuse_enhancements(pipe, folders)` merges saved LoRAs into a pipeline, in order, and drops the LoRA layers: the UNet
then has plain weights again, W + sum_k (alpha_k / r_k) B_k A_k, at the cost of the base model. `merge_loras(folders,
out_dir)` writes one LoRA whose update is a weighted sum of theirs (by default their mean, a "soup" of runs).

Example:
    >>> config = EnhanceConfig(steps=300, lora_rank=8)
    >>> result = train_enhancement(pipe, images, prompts, "runs/round-1/enhance", config)
    >>> fuse_enhancements(pipe, [result["lora"]])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..losses import denoising_loss
from ..losses.preference import diffusion_dpo_loss
from ..scoring import add_noise, encode_images
from ..text import encode_text, get_unet, unet_text_kwargs
from ..train.engine import LoopSettings, Objective, make_accelerator, run_training
from ..train.tune import LORA_WEIGHTS, add_lora, save_lora

__all__ = [
    "EnhanceConfig",
    "EnhanceObjective",
    "fuse_enhancements",
    "load_enhancement",
    "lora_update",
    "merge_loras",
    "train_enhancement",
]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


@dataclasses.dataclass
class EnhanceConfig:
    """Settings of one enhancement LoRA (one round of the loop).

    Args:
        steps (int): optimizer steps. Default 300.
        batch_size (int): pairs per step. Default 32.
        lr (float): AdamW learning rate of the LoRA. Default 1e-4.
        lora_rank (int): LoRA rank r. Default 8.
        lora_alpha (float): LoRA alpha; the update is scaled by alpha / r. Default 8.0.
        lora_targets (tuple[str, ...]): UNet modules that get LoRA. Default the attention projections.
        lora_dropout (float): dropout on the LoRA input. Default 0.0.
        timestep_range (tuple[int, int]): training timesteps drawn uniformly from [lo, hi). Default (0, 1000).
        snr_gamma (float | None): min-SNR weighting of the denoising loss; None: plain MSE. Default None.
        warmup_steps (int): linear learning-rate warmup. Default 0.
        checkpoint_every (int): steps between checkpoints. Default 100.
        seed (int): seed of the LoRA init and of the data order. Default 0.
        mixed_precision (str): "no", "fp16" or "bf16" (the frozen weights' dtype; the LoRA stays float32).
        objective (str): "denoising" (fit the kept images) or "dpo" (prefer them to the rejected ones, Diffusion-DPO).
            Default "denoising".
        dpo_beta (float): Diffusion-DPO's beta, > 0 (larger: closer to the reference). Default 2000.
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    lora_dropout: float = 0.0
    timestep_range: tuple[int, int] = (0, 1000)
    snr_gamma: float | None = None
    warmup_steps: int = 0
    checkpoint_every: int = 100
    seed: int = 0
    mixed_precision: str = "no"
    objective: str = "denoising"
    dpo_beta: float = 2000.0

    def loop_settings(self) -> LoopSettings:
        """How the training engine runs a LoRA of these settings."""
        return LoopSettings(steps=self.steps, seed=self.seed, lr_warmup_steps=self.warmup_steps,
                            checkpoint_every=self.checkpoint_every, samples_per_step=self.batch_size)  # fmt: skip

    def __post_init__(self):
        for name in ("steps", "batch_size", "lora_rank", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; pass an int >= 1.")
        for name in ("warmup_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` is {value!r}; pass an int >= 0.")
        if self.objective not in ("denoising", "dpo"):
            raise ValueError(f"`objective` is {self.objective!r}; pick 'denoising' or 'dpo'.")
        for name in ("lr", "lora_alpha", "dpo_beta"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"`{name}` is {getattr(self, name)!r}; pass a finite number > 0.")
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"`lora_dropout` is {self.lora_dropout!r}; pass a probability in [0, 1).")
        self.lora_targets = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        lo_hi = tuple(self.timestep_range) if isinstance(self.timestep_range, (tuple, list)) else ()
        if len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi) or not 0 <= lo_hi[0] < lo_hi[1]:
            raise ValueError(
                f"`timestep_range` is {self.timestep_range!r}; pass (lo, hi) ints with 0 <= lo < hi, e.g. (0, 1000)."
            )
        self.timestep_range = lo_hi
        if self.snr_gamma is not None and (not _is_number(self.snr_gamma) or self.snr_gamma <= 0):
            raise ValueError(f"`snr_gamma` is {self.snr_gamma!r}; pass a value > 0 (5.0 is usual), or None.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"`mixed_precision` is {self.mixed_precision!r}; pick 'no', 'fp16' or 'bf16'.")


def _text_encoders(pipe) -> list[torch.nn.Module]:
    return [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]


class EnhanceObjective(Objective):
    """One enhancement LoRA as an engine objective (see the module docstring).

    Args:
        pipe: a diffusers pipeline; its UNet gets the LoRA in place (left active and unfused afterwards).
        latents (torch.Tensor): `(N, C, h, w)` VAE latents of the kept images (`scoring.encode_images`).
        prompts (Sequence[str]): the N prompts the images were kept for.
        config (EnhanceConfig): settings.
        rejected (torch.Tensor | None): `(N, C, h, w)` latents of a rejected image per kept one; needed by (only by)
            `objective="dpo"`.
    """

    name = "enhance"
    outputs = ("lora",)

    def __init__(self, pipe, latents: torch.Tensor, prompts: Sequence[str], config: EnhanceConfig, rejected=None):
        if latents.ndim != 4 or len(latents) != len(prompts) or not len(prompts):
            raise ValueError(
                f"`latents` has shape {tuple(latents.shape)} for {len(prompts)} prompts; pass (N, C, h, w) latents "
                "of N >= 1 images, one per prompt."
            )
        if (rejected is not None) != (config.objective == "dpo"):
            raise ValueError(
                f"`objective` is {config.objective!r} and `rejected` is {'given' if rejected is not None else 'None'}; "
                "pass rejected images with objective='dpo', and only then."
            )
        if rejected is not None and rejected.shape != latents.shape:
            raise ValueError(
                f"`rejected` has shape {tuple(rejected.shape)}, the kept latents {tuple(latents.shape)}; pass one "
                "rejected image per kept one."
            )
        self.pipe, self.config = pipe, config
        self.latents = latents.detach().to("cpu", torch.float32)
        self.rejected = None if rejected is None else rejected.detach().to("cpu", torch.float32)
        self.prompts = list(prompts)
        self.unique = sorted(set(self.prompts))
        self.prompt_ids = torch.tensor([self.unique.index(p) for p in self.prompts])
        self.settings = config.loop_settings()

    def record(self) -> dict:
        digest = hashlib.sha256(self.latents.numpy().tobytes())
        if self.rejected is not None:
            digest.update(self.rejected.numpy().tobytes())
        digest.update("\n".join(self.prompts).encode("utf-8"))
        return {
            "config": dataclasses.asdict(self.config),
            "run": {"pairs": len(self.prompts), "data": digest.hexdigest()},
        }

    def setup(self, accelerator) -> torch.nn.Module:
        pipe, unet = self.pipe, get_unet(self.pipe)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.mixed_precision, torch.float32)
        pipe.to(accelerator.device)
        for module in (pipe.vae, unet, *_text_encoders(pipe)):
            module.requires_grad_(False).eval()
        with torch.no_grad():
            self.text = encode_text(pipe, self.unique)
        add_lora(unet, self.config, seed=self.config.seed + 1)
        if unet.dtype != dtype:
            unet.to(dtype)
        for param in unet.parameters():
            if param.requires_grad:
                param.data = param.data.float()  # float32 master weights of the LoRA
        unet.train()
        return unet

    def param_groups(self, module) -> list[dict]:
        return [{"params": [p for p in module.parameters() if p.requires_grad], "lr": self.config.lr}]

    def generator(self, micro_step: int, accelerator) -> torch.Generator:
        """The source of micro-batch `micro_step`'s data on this process: a pure function of (seed, step, process)."""
        seed = np.random.SeedSequence((self.config.seed, micro_step, accelerator.process_index)).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    def micro_batches(self, first: int, count: int, accelerator):
        lo, hi = self.config.timestep_range
        shape = self.latents.shape[1:]
        for m in range(first, first + count):
            g = self.generator(m, accelerator)
            idx = torch.randint(len(self.prompts), (self.config.batch_size,), generator=g)
            t = torch.randint(lo, hi, (self.config.batch_size,), generator=g)
            noise = torch.randn((self.config.batch_size, *shape), generator=g)
            yield idx, t, noise

    def loss(self, model, batch, step: int, accelerator) -> dict[str, torch.Tensor]:
        idx, t, noise = batch
        device, dtype = accelerator.device, get_unet(self.pipe).dtype
        x0 = self.latents[idx].to(device)  # (B, C, h, w)
        t, noise = t.to(device), noise.to(device)
        ids = self.prompt_ids[idx].to(self.text.encoder_hidden_states.device)
        text = self.text.index(ids)
        abar = self.pipe.scheduler.alphas_cumprod.to(device)
        if self.rejected is None:
            x_t = add_noise(abar, x0, noise, t).to(dtype)
            pred = model(x_t, t, text.encoder_hidden_states, **unet_text_kwargs(self.pipe, text, x_t)).sample
            return {"loss": denoising_loss(pred, x0, noise, t, self.pipe.scheduler, snr_gamma=self.config.snr_gamma)}
        # Diffusion-DPO: kept and rejected latents in one batch, same noise and timestep; the reference is the UNet
        # with its LoRA off
        x_l = self.rejected[idx].to(device)
        x_t = add_noise(abar, torch.cat([x0, x_l]), torch.cat([noise, noise]), torch.cat([t, t])).to(dtype)
        text, tt = self.text.index(torch.cat([ids, ids])), torch.cat([t, t])
        kwargs = unet_text_kwargs(self.pipe, text, x_t)
        pred_w, pred_l = model(x_t, tt, text.encoder_hidden_states, **kwargs).sample.chunk(2)
        unet = get_unet(self.pipe)
        with torch.no_grad():
            unet.disable_adapters()
            try:
                ref_w, ref_l = unet(x_t, tt, text.encoder_hidden_states, **kwargs).sample.chunk(2)
            finally:
                unet.enable_adapters()
        loss, accuracy = diffusion_dpo_loss(
            pred_w, pred_l, ref_w, ref_l, x0, x_l, noise, t, self.pipe.scheduler, beta=self.config.dpo_beta
        )
        return {"loss": loss, "accuracy": accuracy}

    def finish(self, run, step: int, accelerator) -> dict:
        folder = run.write_output("lora", lambda f: save_lora(self.pipe, f), {"step": step})
        return {"lora": str(folder)}


@torch.no_grad()
def _encode(pipe, images, batch_size: int = 64) -> torch.Tensor:
    return torch.cat(
        [encode_images(pipe, images[i : i + batch_size]).float().cpu() for i in range(0, len(images), batch_size)]
    )


def train_enhancement(
    pipe,
    images,
    prompts: Sequence[str],
    out_dir: str | os.PathLike,
    config: EnhanceConfig | None = None,
    *,
    rejected=None,
    resume: bool = True,
    progress: bool = True,
    accelerator=None,
) -> dict:
    """Train one enhancement LoRA on (prompt i, image i) pairs (see the module docstring), or resume it.

    Args:
        pipe: a diffusers pipeline (SD 1.x/2.x, SDXL); its UNet carries the trained LoRA afterwards (unfused).
        images: N PIL images or a `(N, 3, H, W)` tensor in [0, 1], at the pipeline's resolution.
        prompts (Sequence[str]): N prompts.
        out_dir (str | PathLike): the run folder.
        config (EnhanceConfig | None): settings; `EnhanceConfig()` by default.
        rejected: N rejected images (as `images`), image i of prompt i: needed by `objective="dpo"`.
        resume (bool): continue a run in `out_dir`. Default True.
        progress (bool): progress bar. Default True.
        accelerator: an `accelerate.Accelerator`; `make_accelerator(config.mixed_precision)` by default.

    Returns:
        dict: the engine's result, with `lora` (the folder for `pipe.load_lora_weights`) when done.
    """
    config = EnhanceConfig() if config is None else config
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts; pass one prompt per image.")
    if rejected is not None and len(rejected) != len(images):
        raise ValueError(f"{len(rejected)} rejected images for {len(images)} kept ones; pass one per kept image.")
    rejected = None if rejected is None else _encode(pipe, rejected)
    objective = EnhanceObjective(pipe, _encode(pipe, images), prompts, config, rejected=rejected)
    accelerator = make_accelerator(config.mixed_precision) if accelerator is None else accelerator
    return run_training(objective, out_dir, resume=resume, progress=progress, accelerator=accelerator)


def _checked_scales(scales: Sequence[float] | None, n: int, default: float) -> list[float]:
    """One finite weight per LoRA folder (`default` each when None), or a ValueError."""
    scales = [default] * n if scales is None else [float(s) for s in scales]
    if len(scales) != n or not all(math.isfinite(s) for s in scales):
        raise ValueError(f"`scales` is {scales!r} for {n} folders; pass one finite number per folder.")
    return scales


def fuse_enhancements(pipe, folders: Sequence[str | os.PathLike], scales: Sequence[float] | None = None) -> None:
    """Merge the LoRAs saved in `folders` (diffusers' format) into `pipe`'s UNet, in order, and remove the LoRA
    layers, leaving plain weights. A LoRA still attached from training is removed first, unmerged.

    Args:
        pipe: the pipeline the LoRAs were trained on.
        folders (`Sequence[str | PathLike]`): the LoRA folders.
        scales (`Sequence[float]`, *optional*): each LoRA's weight (diffusers' `lora_scale`): 1 merges it as
            trained; n LoRAs of one model at 1/n each merge the mean of their updates (a "soup"). Default all 1.

    Raises:
        FileNotFoundError: a folder without `pytorch_lora_weights.safetensors`.
        ValueError: `scales` not one finite number per folder.
    """
    for folder in folders:
        if not (Path(folder) / LORA_WEIGHTS).is_file():
            raise FileNotFoundError(
                f"No LoRA at {Path(folder) / LORA_WEIGHTS}; pass the `lora` folder of a finished enhancement run."
            )
    scales = _checked_scales(scales, len(folders), default=1.0)
    unet = get_unet(pipe)
    if getattr(unet, "peft_config", None):
        pipe.unload_lora_weights()
    for k, (folder, scale) in enumerate(zip(folders, scales)):
        load_enhancement(pipe, folder, f"enhance_{k}")
        pipe.fuse_lora(components=["unet"], lora_scale=scale, adapter_names=[f"enhance_{k}"])
        pipe.unload_lora_weights()


def _rank_and_alpha(metadata: dict, folder) -> tuple[int, float]:
    """`(r, lora_alpha)` of a diffusers LoRA file's `lora_adapter_metadata` (one rank and alpha for every module)."""
    config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    rank, alpha = config.get("unet.r"), config.get("unet.lora_alpha")
    if rank is None or alpha is None or config.get("unet.rank_pattern") or config.get("unet.alpha_pattern"):
        raise ValueError(
            f"The LoRA in {folder} has no single rank and alpha in its metadata; pass LoRAs saved by discadapt's "
            "trainers or by diffusers' save_lora_weights with peft's metadata."
        )
    return int(rank), float(alpha)


def _read_lora(folder) -> tuple[dict, dict[str, torch.Tensor]]:
    """`(metadata, tensors)` of the LoRA file in `folder` (diffusers' format), the tensors in float32."""
    from safetensors import safe_open

    path = Path(folder) / LORA_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"No LoRA at {path}; pass the `lora` folder of a finished run.")
    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k).float() for k in f.keys()}


def merge_loras(
    folders: Sequence[str | os.PathLike], out_dir: str | os.PathLike, scales: Sequence[float] | None = None
) -> Path:
    """Write one LoRA (diffusers' format, `out_dir/pytorch_lora_weights.safetensors`) whose update is
    sum_i scales_i (alpha_i / r_i) B_i A_i of the LoRAs in `folders`: their A ("down") matrices stacked, their B
    ("up") matrices scaled by scales_i alpha_i / r_i side by side, rank sum_i r_i and alpha equal to it. Fusing it
    gives what `fuse_enhancements(pipe, folders, scales)` gives, up to float rounding.

    Args:
        folders (`Sequence[str | PathLike]`): LoRAs of one model on the same modules (diffusers' format).
        out_dir (`str | PathLike`): the folder to write (created).
        scales (`Sequence[float]`, *optional*): one weight per LoRA; default 1/n each (the mean update, a "soup").

    Returns:
        Path: `out_dir`.

    Raises:
        FileNotFoundError: a folder without `pytorch_lora_weights.safetensors`.
        ValueError: `scales` not one finite number per folder; LoRAs on different modules; no single rank and
            alpha in a LoRA's metadata.
    """
    from safetensors.torch import save_file

    if not folders:
        raise ValueError("`folders` is empty; pass the LoRA folders to merge.")
    scales = _checked_scales(scales, len(folders), default=1.0 / len(folders))
    loras = [_read_lora(folder) for folder in folders]
    keys = sorted(loras[0][1])
    for folder, (_, tensors) in zip(folders, loras):
        if sorted(tensors) != keys:
            raise ValueError(f"The LoRA in {folder} is on other modules than the one in {folders[0]}; merge LoRAs of "
                             "the same targets.")  # fmt: skip
    ranks_alphas = [_rank_and_alpha(metadata, folder) for folder, (metadata, _) in zip(folders, loras)]
    factors = [scale * alpha / rank for scale, (rank, alpha) in zip(scales, ranks_alphas)]
    merged = {}
    for key in keys:
        parts = [tensors[key] for _, tensors in loras]
        if key.endswith(("lora.up.weight", "lora_B.weight")):  # (out, r_i): side by side, scaled
            merged[key] = torch.cat([factor * part for factor, part in zip(factors, parts)], dim=1).contiguous()
        else:  # (r_i, in): stacked
            merged[key] = torch.cat(parts, dim=0).contiguous()
    total = sum(rank for rank, _ in ranks_alphas)
    config = json.loads(loras[0][0]["lora_adapter_metadata"])
    config.update({"unet.r": total, "unet.lora_alpha": total})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {**loras[0][0], "lora_adapter_metadata": json.dumps(config, indent=2)}
    save_file(merged, out / LORA_WEIGHTS, metadata=metadata)
    return out


def lora_update(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weight update (alpha / r) B A of each module of the LoRA saved in `folder` (diffusers' format), float32,
    keyed by the module's name in the file (its down/A key without the suffix): what fusing it adds to the weights
    of a linear layer.

    Raises:
        FileNotFoundError: a folder without `pytorch_lora_weights.safetensors`.
        ValueError: no single rank and alpha in the LoRA's metadata.
    """
    metadata, tensors = _read_lora(folder)
    rank, alpha = _rank_and_alpha(metadata, folder)
    updates = {}
    for key, down in tensors.items():
        for down_suffix, up_suffix in ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight")):
            if key.endswith(down_suffix):
                module = key[: -len(down_suffix)]
                updates[module] = (alpha / rank) * tensors[module + up_suffix].flatten(1) @ down.flatten(1)
    return updates


def load_enhancement(pipe, folder: str | os.PathLike, name: str = "enhance") -> None:
    """Attach the LoRA saved in `folder` to `pipe`'s UNet as adapter `name`, active and unfused (the UNet's part of
    `pipe.load_lora_weights`; an enhancement LoRA has no text-encoder part)."""
    get_unet(pipe).load_lora_adapter(
        str(folder), prefix="unet", weight_name=LORA_WEIGHTS, adapter_name=name, use_safetensors=True
    )
