"""Reward tuning: an enhancement LoRA trained by the gradient of an understanding model's score of the pipeline's own
images, backpropagated through the sampler (DRaFT, Clark et al. 2023; AlignProp, Prabhudesai et al. 2023). ArtAug's
enhancement module, fed by the critic's gradient instead of the images it kept.

Each micro-batch draws `batch_size` prompts and initial noises (a pure function of the step, as every engine
objective), runs DDIM with classifier-free guidance as the pipeline samples (`num_inference_steps`,
`guidance_scale`), keeps the autograd graph through the last `grad_steps` steps only (the earlier ones run without
it: DRaFT-K; `grad_steps = num_inference_steps` backpropagates through the whole chain), decodes with the VAE and
maximises the reward of the images: `loss = -mean(reward(images, prompts))`. The reward is any differentiable
`(images in [-1, 1], prompts) -> (B,)` callable, e.g. the shapes world's `clip.HardNegativeReward`.

Only DDIM with epsilon prediction is supported (the sampler written out here is the pipeline's own for it).

Example:
    >>> reward = HardNegativeReward(load_clip())
    >>> result = train_reward(pipe, prompts, reward, "runs/reward", EnhanceConfig(steps=300, lr=1e-4))
    >>> fuse_enhancements(fresh_pipe, [result["lora"]])  # costs what the base pipeline does
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence

import torch

from ..text import get_unet, unet_text_kwargs
from ..train.engine import make_accelerator, run_training
from .distil import _check_ddim
from .enhance import EnhanceConfig, EnhanceObjective

__all__ = ["RewardObjective", "train_reward"]

Reward = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


class RewardObjective(EnhanceObjective):
    """The reward of the pipeline's own samples as an engine objective (module docstring). Uses `config`'s steps,
    batch_size, lr, lora_*, warmup_steps, checkpoint_every, seed and mixed_precision; its timestep_range, snr_gamma
    and objective do not apply.

    Args:
        pipe: a diffusers pipeline (SD 1.x/2.x) with a DDIM scheduler; its UNet gets the LoRA in place.
        prompts (Sequence[str]): the training prompts, drawn with replacement.
        reward (callable): `(images (B, 3, H, W) in [-1, 1], prompts) -> (B,)`, differentiable in the images.
        config (EnhanceConfig): settings.
        num_inference_steps (int): sampler steps, as the pipeline is used. Default 25.
        guidance_scale (float): classifier-free guidance, > 1. Default 4.0.
        grad_steps (int): the last sampler steps the gradient flows through, 1 to `num_inference_steps`. Default 5.
        reward_name (str): recorded with the run, so a run is resumed with the same reward. Default "reward".
    """

    name = "reward"

    def __init__(self, pipe, prompts: Sequence[str], reward: Reward, config: EnhanceConfig, *,
                 num_inference_steps: int = 25, guidance_scale: float = 4.0, grad_steps: int = 5,
                 reward_name: str = "reward"):  # fmt: skip
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`prompts` is {prompts!r:.80}; pass a non-empty list of prompt strings.")
        if not 1 <= grad_steps <= num_inference_steps:
            raise ValueError(f"`grad_steps` is {grad_steps}; pass 1 to num_inference_steps ({num_inference_steps}).")
        if not guidance_scale > 1:
            raise ValueError(f"`guidance_scale` is {guidance_scale}; pass a value > 1 (classifier-free guidance).")
        _check_ddim(pipe.scheduler, "reward tuning")
        self.pipe, self.config, self.reward, self.prompts = pipe, config, reward, prompts
        self.unique = ["", *prompts]  # row 0: the unconditional prompt (encoded by `setup`)
        self.sampling = {"num_inference_steps": int(num_inference_steps), "guidance_scale": float(guidance_scale),
                         "grad_steps": int(grad_steps), "reward": reward_name}  # fmt: skip
        self.settings = config.loop_settings()

    def record(self) -> dict:
        digest = hashlib.sha256("\n".join(self.prompts).encode("utf-8")).hexdigest()
        return {"config": dataclasses.asdict(self.config), "run": {**self.sampling, "prompts": digest}}

    def micro_batches(self, first: int, count: int, accelerator):
        unet = get_unet(self.pipe)
        shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        for m in range(first, first + count):
            g = self.generator(m, accelerator)
            idx = torch.randint(len(self.prompts), (self.config.batch_size,), generator=g)
            yield idx, torch.randn((self.config.batch_size, *shape), generator=g)

    def sample(self, model, idx: torch.Tensor, noise: torch.Tensor, device, on_step=None) -> torch.Tensor:
        """Decoded images `(B, 3, H, W)` of prompts `idx` from `noise`, the last `grad_steps` steps with a graph (none
        under the caller's `torch.no_grad()`). `on_step(i, t, unet_input, text, prediction)`, if given, sees every
        step's UNet call ([uncond; cond] rows)."""
        from diffusers import DDIMScheduler

        steps, w, k = (self.sampling[key] for key in ("num_inference_steps", "guidance_scale", "grad_steps"))
        scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(steps, device=device)
        ids = (idx + 1).to(self.text.encoder_hidden_states.device)
        text = self.text.index(torch.cat([torch.zeros_like(ids), ids]))
        dtype = get_unet(self.pipe).dtype
        z, graph = noise.to(device) * scheduler.init_noise_sigma, torch.is_grad_enabled()
        for i, t in enumerate(scheduler.timesteps):
            with torch.set_grad_enabled(graph and i >= steps - k):
                z2 = torch.cat([z, z]).to(dtype)
                pred = model(z2, t, text.encoder_hidden_states, **unet_text_kwargs(self.pipe, text, z2)).sample
                if on_step is not None:
                    on_step(i, t, z2, text, pred)
                uncond, cond = pred.float().chunk(2)
                z = scheduler.step(uncond + w * (cond - uncond), t, z).prev_sample
        vae = self.pipe.vae
        return vae.decode((z / vae.config.scaling_factor).to(vae.dtype)).sample.float().clamp(-1, 1)

    def loss(self, model, batch, step: int, accelerator) -> dict[str, torch.Tensor]:
        idx, noise = batch
        images = self.sample(model, idx, noise, accelerator.device)
        reward = self.reward(images, [self.prompts[i] for i in idx.tolist()])
        return {"loss": -reward.mean(), "reward": reward.detach().mean()}


def train_reward(
    pipe,
    prompts: Sequence[str],
    reward: Reward,
    out_dir: str | os.PathLike,
    config: EnhanceConfig | None = None,
    *,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator=None,
    **sampling,
) -> dict:
    """Train (or resume) a LoRA that raises `reward` of the pipeline's own images; see the module docstring.
    `sampling`: `num_inference_steps`, `guidance_scale`, `grad_steps`, `reward_name` of `RewardObjective`.

    Returns:
        dict: the engine's result, with `lora` (a folder in diffusers' format, for `fuse_enhancements`) when done.
    """
    config = EnhanceConfig() if config is None else config
    objective = RewardObjective(pipe, prompts, reward, config, **sampling)
    accelerator = make_accelerator(config.mixed_precision) if accelerator is None else accelerator
    return run_training(
        objective, out_dir, resume=resume, stop_after=stop_after, progress=progress, accelerator=accelerator
    )
