"""Self-correction (DPT, Qu et al. 2024): gradient ascent on the adapter's ITM score between denoising steps.

A diffusers `PipelineCallback`: after the sampler has produced the latent z for the next timestep t, it moves

    z <- z + eta_k * g(z),    g = grad_z s(z, y)      (k = index of t in the schedule, fraction f = k / N)

where s is the adapter's ITM logit of the latent for the prompt y (UNet conditioned on y, the early-exit probe, so
the backward pass only crosses the blocks up to the probed one), eta_k = `scale` * `schedule`(f), inside the
window `start` <= f < `stop`, optionally with g normalised or clipped per image, `iterations` times per step.

The latent is fed to the UNet as the sampler feeds it, through `scheduler.scale_model_input` (Euler-type samplers
keep sigma-scaled latents), in float32 whatever the pipeline's dtype; a non-finite gradient skips the step with a
warning. The callback reads only `latents`, so it works with any diffusers pipeline that exposes them, with or
without classifier-free guidance.

Example:
    >>> fix = SelfCorrection(adapter, prompt=prompts, scale=0.5)
    >>> images = pipe(prompts, callback_on_step_end=fix, callback_on_step_end_tensor_inputs=fix.tensor_inputs).images
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from diffusers.callbacks import PipelineCallback

from ..adapter import DiscriminativeAdapter
from ..probe import FeatureProbe
from ..text import TextEmbeddings, encode_text, get_unet, unet_text_kwargs

__all__ = ["SelfCorrection", "SCHEDULES"]

# eta multiplier as a function of the fraction f in [0, 1) of the schedule already done
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda f: 1.0,
    "linear": lambda f: 1.0 - f,  # strongest early, when the layout is decided
    "cosine": lambda f: 0.5 * (1.0 + math.cos(math.pi * f)),
}
ScoreFn = Callable[[torch.Tensor, torch.Tensor, TextEmbeddings], torch.Tensor]


class SelfCorrection(PipelineCallback):
    """Moves the latents along the gradient of an image-text score between denoising steps.

    Args:
        adapter (`DiscriminativeAdapter` or callable): the score. An adapter gives its ITM logit through an
            early-exit probe; a callable `score(model_input (B, C, h, w), t (B,), text) -> (B,)` replaces it
            (for custom scores and tests).
        prompt (`str` or `Sequence[str]`): the prompts passed to the pipeline; each latent of the batch is scored
            against its own prompt (`num_images_per_prompt` consecutive latents per prompt, as diffusers orders them).
        scale (`float`, defaults to 1.0): eta, the step size. 0 leaves the sampling untouched.
        start (`float`, defaults to 0.0), stop (`float`, defaults to 1.0): the window, as fractions of the schedule.
        schedule (`str` or callable, defaults to `"constant"`): eta multiplier over the schedule, one of `SCHEDULES`
            or a function of the fraction f.
        normalize (`str`, defaults to `"none"`): `"none"`, `"unit"` (each image's gradient scaled to L2 norm 1, so
            eta is a step length) or `"clip"` (norms above `max_grad_norm` scaled down to it).
        max_grad_norm (`float`, defaults to 1.0): the bound for `normalize="clip"`.
        iterations (`int`, defaults to 1): correction steps per denoising step.
    """

    tensor_inputs = ["latents"]

    def __init__(
        self,
        adapter: DiscriminativeAdapter | ScoreFn,
        prompt: str | Sequence[str],
        scale: float = 1.0,
        start: float = 0.0,
        stop: float = 1.0,
        schedule: str | Callable[[float], float] = "constant",
        normalize: str = "none",
        max_grad_norm: float = 1.0,
        iterations: int = 1,
    ):
        super().__init__(cutoff_step_ratio=1.0)
        scale = float(scale)
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"`scale` is {scale}; pass a finite value >= 0 (0 disables the correction).")
        if not (0.0 <= start <= stop <= 1.0):
            raise ValueError(f"The window is start={start}, stop={stop}; pass 0 <= start <= stop <= 1.")
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise ValueError(f"`schedule` is {schedule!r}; pass one of {sorted(SCHEDULES)} or a function of f.")
        if normalize not in ("none", "unit", "clip"):
            raise ValueError(f"`normalize` is {normalize!r}; pass 'none', 'unit' or 'clip'.")
        if not max_grad_norm > 0:
            raise ValueError(f"`max_grad_norm` is {max_grad_norm}; pass a positive value.")
        if int(iterations) != iterations or iterations < 1:
            raise ValueError(f"`iterations` is {iterations}; pass an integer >= 1.")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("`prompt` is empty; pass the prompts given to the pipeline.")
        self.adapter = adapter
        self.prompts = prompts
        self.scale, self.start, self.stop = scale, start, stop
        self.schedule = SCHEDULES[schedule] if isinstance(schedule, str) else schedule
        self.normalize, self.max_grad_norm, self.iterations = normalize, max_grad_norm, int(iterations)
        self._text: tuple[int, int, TextEmbeddings] | None = None  # (id of pipe, batch, text)

    # setup ---------------------------------------------------------------------------------------------------
    def _check_pipeline(self, pipe) -> None:
        if "latents" not in getattr(pipe, "_callback_tensor_inputs", ()):
            raise ValueError(
                f"{type(pipe).__name__} does not give `latents` to callback_on_step_end, so SelfCorrection cannot "
                "change them; use a pipeline that lists 'latents' in `_callback_tensor_inputs` (e.g. "
                "StableDiffusionPipeline, StableDiffusionXLPipeline)."
            )
        if isinstance(self.adapter, DiscriminativeAdapter):
            self.adapter.check_pipeline(pipe)

    def _text_for(self, pipe, batch: int) -> TextEmbeddings:
        """The prompts' embeddings, repeated for `num_images_per_prompt`, encoded once per pipeline and batch."""
        if self._text is None or self._text[:2] != (id(pipe), batch):
            if batch % len(self.prompts):
                raise ValueError(
                    f"The pipeline's batch has {batch} latents, not a multiple of the {len(self.prompts)} prompts "
                    "given to SelfCorrection; pass it the same `prompt` as the pipeline."
                )
            self._check_pipeline(pipe)
            with torch.no_grad():
                text = encode_text(pipe, self.prompts)
            index = torch.arange(len(self.prompts), device=text.pooled.device)
            text = text.index(index.repeat_interleave(batch // len(self.prompts)))
            self._text = (id(pipe), batch, text)
        return self._text[2]

    # the correction -------------------------------------------------------------------------------------------
    def score(self, pipe, model_input: torch.Tensor, t: torch.Tensor, text: TextEmbeddings) -> torch.Tensor:
        """s(z, y) for each latent: (B,)."""
        if not isinstance(self.adapter, DiscriminativeAdapter):
            return self.adapter(model_input, t, text)
        unet = get_unet(pipe)
        probe = FeatureProbe(unet, self.adapter.config.layers, detach=False, early_exit=True)
        feats = probe(model_input, t, text.encoder_hidden_states, **unet_text_kwargs(pipe, text, model_input))
        out = self.adapter(feats, t, text_tokens=text.encoder_hidden_states)
        return self.adapter.itm_logits(out, text.pooled)

    def gradient(self, pipe, latents: torch.Tensor, t: torch.Tensor, text: TextEmbeddings) -> torch.Tensor:
        """g = grad_z s(z, y) in float32, per image normalised or clipped as configured: (B, C, h, w)."""
        unet = get_unet(pipe)
        with torch.enable_grad():
            z = latents.detach().float().requires_grad_(True)
            model_input = pipe.scheduler.scale_model_input(z, t).to(unet.dtype)
            scores = self.score(pipe, model_input, t.expand(z.shape[0]), text)
            (grad,) = torch.autograd.grad(scores.sum(), z)
        if self.normalize != "none":
            norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
            bound = 1.0 if self.normalize == "unit" else self.max_grad_norm
            factor = bound / norms if self.normalize == "unit" else (bound / norms).clamp(max=1.0)
            grad = grad * factor
        return grad

    def step_size(self, pipe, step_index: int) -> float:
        """eta for the latent that the callback of step `step_index` receives (0 outside the window)."""
        timesteps = pipe.scheduler.timesteps
        k = step_index + 1  # the latent is for timesteps[k]
        fraction = k / len(timesteps)
        if self.scale == 0 or k >= len(timesteps) or not (self.start <= fraction < self.stop):
            return 0.0
        return self.scale * float(self.schedule(fraction))

    def callback_fn(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        latents = callback_kwargs["latents"]
        text = self._text_for(pipe, latents.shape[0])  # checks the pipeline on the first call
        eta = self.step_size(pipe, step_index)
        if eta == 0:
            return callback_kwargs
        t = pipe.scheduler.timesteps[step_index + 1].to(latents.device)
        z = latents.float()
        for _ in range(self.iterations):
            grad = self.gradient(pipe, z, t, text)
            if not torch.isfinite(grad).all():
                warnings.warn(f"SelfCorrection: non-finite gradient at step {step_index}; correction skipped.")
                return callback_kwargs
            z = z + eta * grad
        callback_kwargs["latents"] = z.to(latents.dtype)
        return callback_kwargs
