"""Self-correction (DPT, Qu et al. 2024): gradient ascent on the adapter's ITM score between denoising steps.

A diffusers `PipelineCallback`: after the sampler has produced the latent z for the next timestep t, it moves

    z <- z + eta_k * g(z),    g = grad_z s(z, y)      (k = index of t in the schedule, fraction f = k / N)

where s is a differentiable image-text score of the latent for the prompt y: a `scorers.LatentScorer`, by default the
adapter's ITM logit (`scorers.AdapterScorer`: UNet conditioned on y, the early-exit probe, so the backward pass only
crosses the blocks up to the probed one), eta_k = `scale` * `schedule`(f), inside the
window `start` <= f < `stop` (every `every`-th step of it), optionally with g normalised or clipped per image,
`iterations` times per step.

Three modes:
- `"plain"`: an extra early-exit forward and its backward per corrected step, at the new latent. The latent is fed
  to the UNet as the sampler feeds it, through `scheduler.scale_model_input` (Euler-type samplers keep
  sigma-scaled latents), in float32 whatever the pipeline's dtype.
- `"reuse"` (low overhead): the sampler's own UNet pass of this step keeps its graph up to the probed block
  (`UNetPassRecorder`), and one partial backward gives the gradient at the latent the step started from; it is
  applied to the new latent (one step of lag) and computed in the pipeline's dtype. Only passes whose step is
  corrected are recorded; the first corrected step, which precedes any recorded pass, uses the plain gradient.
  With classifier-free guidance a recorded pass runs its unconditional half as a separate call without a graph,
  so the backward crosses the conditional half only (the guided prediction then differs from the batched one by
  float rounding, on recorded steps only).
- `"input"` (the authors' form, DPT's released code): the same gradient, but taken with respect to the UNet's input
  and added, `eta * g`, to the *conditional* half of the next UNet call's input only; the sampler's step then
  applies to the uncorrected latent, so the correction acts through the noise prediction, like classifier guidance.
  The latent trajectory itself is never edited. Same cost as plain. (diffusers' `callback_on_step_end` runs after
  `scheduler.step`, so the callback leaves a one-shot forward pre-hook on the UNet for the next call.)
A non-finite gradient, or a corrected latent that is not finite in the pipeline's dtype, skips the step with a
warning. The callback changes only `latents`, so it works with any diffusers pipeline that exposes them, with or
without classifier-free guidance; it also reads `prompt_embeds` (in `tensor_inputs`; pass `["latents"]` to a pipeline
that does not expose them) to check on the first step that its `prompt` is the pipeline's: a prompt list that does
not match the pipeline's batch (e.g. one prompt while the pipeline draws three) is a ValueError. The settings are the
callback's `config` (diffusers' `ConfigMixin`); the adapter follows the pipeline's execution device. For SD and SDXL
the self-correcting pipelines (`pipeline.py`) hold the adapter as a component and pass the call's prompts themselves.

Example:
    >>> fix = SelfCorrection(adapter, prompt=prompts, scale=0.5)
    >>> images = pipe(prompts, callback_on_step_end=fix, callback_on_step_end_tensor_inputs=fix.tensor_inputs).images
    >>> fix.config.scale, fix.config.mode
    (0.5, 'plain')
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from diffusers.callbacks import PipelineCallback

from ..adapter import DiscriminativeAdapter
from ..scorers import AdapterScorer, LatentScorer, LayoutScorer
from ..text import TextEmbeddings, encode_text, get_unet
from .recorder import UNetPassRecorder

__all__ = ["MODES", "SelfCorrection", "SCHEDULES", "layout_term"]

MODES = ("plain", "reuse", "input")

# eta multiplier as a function of the fraction f in [0, 1) of the schedule already done
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda f: 1.0,
    "linear": lambda f: 1.0 - f,  # strongest early, when the layout is decided
    "cosine": lambda f: 0.5 * (1.0 + math.cos(math.pi * f)),
}


class SelfCorrection(PipelineCallback):
    """Moves the latents along the gradient of an image-text score between denoising steps.

    Args:
        scorer (`DiscriminativeAdapter` or `LatentScorer`): the score. An adapter gives its ITM logit through an
            early-exit probe (`scorers.AdapterScorer`); any `LatentScorer` (`score_latents(model_input (B, C, h, w),
            t (B,), text) -> (B,)`, differentiable) replaces it.
        prompt (`str` or `Sequence[str]`): the prompts passed to the pipeline; each latent of the batch is scored
            against its own prompt (`num_images_per_prompt` consecutive latents per prompt, as diffusers orders them).
        scale (`float`, defaults to 1.0): eta, the step size. 0 leaves the sampling untouched.
        start (`float`, defaults to 0.0), stop (`float`, defaults to 1.0): the window, as fractions of the schedule.
        every (`int`, defaults to 1): correct every `every`-th step of the window, from its first (2 halves the
            extra cost of a window; a larger `scale` makes up for the steps left out).
        schedule (`str` or callable, defaults to `"constant"`): eta multiplier over the schedule, one of `SCHEDULES`
            or a function of the fraction f.
        normalize (`str`, defaults to `"none"`): `"none"`, `"unit"` (each image's gradient scaled to L2 norm 1, so
            eta is a step length) or `"clip"` (norms above `max_grad_norm` scaled down to it).
        max_grad_norm (`float`, defaults to 1.0): the bound for `normalize="clip"`.
        iterations (`int`, defaults to 1): correction steps per denoising step (plain mode).
        mode (`str`, defaults to `"plain"`): `"plain"`, `"reuse"` (low overhead; needs an adapter, one iteration) or
            `"input"` (the conditional UNet input is corrected, not the latent; one iteration).
    """

    tensor_inputs = ["latents", "prompt_embeds"]  # prompt_embeds: read, to check that `prompt` is the pipeline's

    def __init__(
        self,
        scorer: DiscriminativeAdapter | LatentScorer,
        prompt: str | Sequence[str],
        scale: float = 1.0,
        start: float = 0.0,
        stop: float = 1.0,
        schedule: str | Callable[[float], float] = "constant",
        normalize: str = "none",
        max_grad_norm: float = 1.0,
        iterations: int = 1,
        mode: str = "plain",
        every: int = 1,
    ):
        super().__init__(cutoff_step_ratio=1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"`scale` is {scale!r}; pass a finite number >= 0 (0 disables the correction).")
        scale = float(scale)
        if not (0.0 <= start <= stop <= 1.0):
            raise ValueError(f"The window is start={start}, stop={stop}; pass 0 <= start <= stop <= 1.")
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise ValueError(f"`schedule` is {schedule!r}; pass one of {sorted(SCHEDULES)} or a function of f.")
        if normalize not in ("none", "unit", "clip"):
            raise ValueError(f"`normalize` is {normalize!r}; pass 'none', 'unit' or 'clip'.")
        if not max_grad_norm > 0:
            raise ValueError(f"`max_grad_norm` is {max_grad_norm}; pass a positive value.")
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(f"`every` is {every!r}; pass an integer >= 1 (1 corrects every step of the window).")
        if int(iterations) != iterations or iterations < 1:
            raise ValueError(f"`iterations` is {iterations}; pass an integer >= 1.")
        if mode not in MODES:
            raise ValueError(f"`mode` is {mode!r}; pass one of {', '.join(map(repr, MODES))}.")
        if mode == "input" and iterations != 1:
            raise ValueError(f"mode='input' corrects the next UNet input once: pass iterations=1 (got {iterations}).")
        if not isinstance(scorer, (DiscriminativeAdapter, LatentScorer)):
            raise ValueError(
                f"`scorer` is a {type(scorer).__name__}; pass a DiscriminativeAdapter or a scorers.LatentScorer (with "
                "score_latents(model_input, t, text))."
            )
        if mode == "reuse" and (iterations != 1 or not isinstance(scorer, DiscriminativeAdapter)):
            raise ValueError(
                f"mode='reuse' reads the sampler's one UNet pass per step: it needs a DiscriminativeAdapter and "
                f"iterations=1 (got {type(scorer).__name__}, iterations={iterations}); use mode='plain'."
            )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("`prompt` is empty; pass the prompts given to the pipeline.")
        self.register_to_config(
            scale=scale, start=start, stop=stop, schedule=schedule if isinstance(schedule, str) else "custom",
            normalize=normalize, max_grad_norm=max_grad_norm, iterations=int(iterations), mode=mode, every=int(every),
        )  # fmt: skip
        self.adapter = scorer if isinstance(scorer, DiscriminativeAdapter) else None
        self.scorer = None if self.adapter is not None else scorer  # an adapter's scorer is built for the pipeline
        self.prompts = prompts
        self.scale, self.start, self.stop = scale, start, stop
        self.schedule = SCHEDULES[schedule] if isinstance(schedule, str) else schedule
        self.normalize, self.max_grad_norm, self.iterations = normalize, max_grad_norm, int(iterations)
        self.mode, self.every = mode, int(every)
        self.recorder: UNetPassRecorder | None = None
        self._input_hook = None  # input mode: the one-shot pre-hook correcting the next UNet call
        self._text: tuple[int, int, TextEmbeddings] | None = None  # (id of pipe, batch, text)

    # setup ---------------------------------------------------------------------------------------------------
    def _check_pipeline(self, pipe) -> None:
        if "latents" not in getattr(pipe, "_callback_tensor_inputs", ()):
            raise ValueError(
                f"{type(pipe).__name__} does not give `latents` to callback_on_step_end, so SelfCorrection cannot "
                "change them; use a pipeline that lists 'latents' in `_callback_tensor_inputs` (e.g. "
                "StableDiffusionPipeline, StableDiffusionXLPipeline)."
            )
        if self.adapter is not None:
            device = pipe._execution_device
            if self.adapter.device != device:  # follow the pipeline (`pipe.to(...)` does not know the callback)
                self.adapter.to(device)
            self.scorer = AdapterScorer(pipe, self.adapter)  # checks that the adapter fits the pipeline

    def _check_prompts(self, batch: int, prompt_embeds: torch.Tensor | None) -> None:
        """A ValueError unless the pipeline's batch of `batch` latents could come from `self.prompts`: a multiple of
        their number, and, when the pipeline gives its `prompt_embeds`, latents of the same prompt exactly where the
        pipeline's prompt embeddings are the same (one prompt given while the pipeline draws three would steer every
        latent toward it)."""
        if batch % len(self.prompts):
            raise ValueError(
                f"The pipeline's batch has {batch} latents, not a multiple of the {len(self.prompts)} prompts given to "
                "SelfCorrection; pass it the same `prompt` as the pipeline."
            )
        if prompt_embeds is None or prompt_embeds.shape[0] < batch:
            return
        ours = [self.prompts[i // (batch // len(self.prompts))] for i in range(batch)]
        rows = prompt_embeds[-batch:].detach().flatten(1)  # the conditional half under classifier-free guidance
        theirs = torch.unique(rows, dim=0, return_inverse=True)[1].tolist()
        canonical = lambda labels: [list(dict.fromkeys(labels)).index(label) for label in labels]  # noqa: E731
        if canonical(ours) != canonical(theirs):
            raise ValueError(
                f"SelfCorrection was given {len(self.prompts)} prompt(s), but the pipeline's {batch} latents come from "
                f"{len(set(theirs))} different prompt(s) in another order, so latents would be steered toward "
                "another image's prompt; pass SelfCorrection the same `prompt` list as the pipeline."
            )

    def _text_for(self, pipe, batch: int, prompt_embeds: torch.Tensor | None = None) -> TextEmbeddings:
        """The prompts' embeddings, repeated for `num_images_per_prompt`, encoded once per pipeline and batch."""
        if self._text is None or self._text[:2] != (id(pipe), batch):
            self._check_prompts(batch, prompt_embeds)
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
        return self.scorer.score_latents(model_input, t, text)

    def gradient(self, pipe, latents: torch.Tensor, t: torch.Tensor, text: TextEmbeddings, of_input: bool = False):
        """g = grad_z s(z, y) (or, `of_input`, the gradient with respect to the UNet's input `scale_model_input(z)`)
        in float32 with an extra forward and backward, normalised or clipped as configured: (B, C, h, w)."""
        unet = get_unet(pipe)
        with torch.enable_grad():
            z = latents.detach().float().requires_grad_(not of_input)
            model_input = pipe.scheduler.scale_model_input(z, t).float()
            if of_input:
                model_input = model_input.detach().requires_grad_(True)
            scores = self.score(pipe, model_input.to(unet.dtype), t.expand(z.shape[0]), text)
            (grad,) = torch.autograd.grad(scores.sum(), model_input if of_input else z)
        return self._normalized(grad.float())

    def recorded_gradient(self, batch: int, text: TextEmbeddings) -> torch.Tensor:
        """g from the sampler's recorded UNet pass (reuse mode): one partial backward, (B, C, h, w) in float32."""
        rec = self.recorder
        cond = slice(rec.input.shape[0] - batch, None)  # the recorded conditional half ([uncond, cond] unsplit)
        t = torch.as_tensor(rec.timestep, device=rec.input.device).reshape(-1).expand(batch)
        with torch.enable_grad():  # the pipeline's loop runs under no_grad: even the slicing must be recorded
            feats = {name: f[cond] for name, f in rec.features.items()}
            out = self.adapter(feats, t, text_tokens=text.encoder_hidden_states)
            logits = self.adapter.itm_logits(out, self.adapter.text_target(text))
            (grad,) = torch.autograd.grad(logits.sum(), rec.input)
        return self._normalized(grad[cond].float() * rec.scale)

    def _normalized(self, grad: torch.Tensor) -> torch.Tensor:
        if self.normalize == "none":
            return grad
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
        if self.normalize == "unit":
            return grad / norms
        return grad * (self.max_grad_norm / norms).clamp(max=1.0)

    def step_size(self, pipe, step_index: int) -> float:
        """eta for the latent that the callback of step `step_index` receives (0 outside the window)."""
        timesteps = pipe.scheduler.timesteps
        k = step_index + 1  # the latent is for timesteps[k]
        fraction = k / len(timesteps)
        if self.scale == 0 or k >= len(timesteps) or not (self.start <= fraction < self.stop):
            return 0.0
        first = next(j for j in range(1, k + 1) if self.start <= j / len(timesteps))  # the window's first k
        if (k - first) % self.every:
            return 0.0
        return self.scale * float(self.schedule(fraction))

    def callback_fn(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        latents = callback_kwargs["latents"]
        text = self._text_for(pipe, latents.shape[0], callback_kwargs.get("prompt_embeds"))  # checks on the first call
        eta = self.step_size(pipe, step_index)
        if eta > 0 and self.mode == "input":
            self._correct_next_input(pipe, step_index, latents, text, eta)
        elif eta > 0:
            callback_kwargs["latents"] = self._correct(pipe, step_index, latents, text, eta)
        if self.mode == "reuse":
            self._track(pipe, step_index, latents.shape[0])  # after the correction, whose forward is not recorded
        return callback_kwargs

    def _correct(self, pipe, step_index: int, latents: torch.Tensor, text: TextEmbeddings, eta: float) -> torch.Tensor:
        reused = self.recorder is not None and self.recorder.input is not None
        z = latents.float()
        for _ in range(self.iterations):
            if reused:
                grad = self.recorded_gradient(latents.shape[0], text)
            else:
                t = pipe.scheduler.timesteps[step_index + 1].to(latents.device)
                grad = self.gradient(pipe, z, t, text)
            if not torch.isfinite(grad).all():
                warnings.warn(f"SelfCorrection: non-finite gradient at step {step_index}; correction skipped.")
                return latents
            z = z + eta * grad
        corrected = z.to(latents.dtype)
        if not torch.isfinite(corrected).all():  # e.g. a large step that overflows float16
            warnings.warn(
                f"SelfCorrection: the corrected latent at step {step_index} is not finite in {latents.dtype} "
                "(step too large for the pipeline's dtype?); correction skipped."
            )
            return latents
        return corrected

    def _correct_next_input(self, pipe, step_index: int, latents: torch.Tensor, text: TextEmbeddings, eta: float):
        """Input mode: `eta * g` (g with respect to the UNet input) added to the conditional half of the next UNet
        call's input, by a pre-hook that removes itself after that call."""
        t = pipe.scheduler.timesteps[step_index + 1].to(latents.device)
        grad = self.gradient(pipe, latents, t, text, of_input=True)
        if not torch.isfinite(grad).all():
            warnings.warn(f"SelfCorrection: non-finite gradient at step {step_index}; correction skipped.")
            return
        shift, batch = eta * grad, latents.shape[0]

        def hook(module, args, kwargs):
            self.remove()
            sample = kwargs["sample"] if "sample" in kwargs else args[0]
            corrected = sample.clone()
            corrected[-batch:] = (sample[-batch:].float() + shift).to(sample.dtype)  # the conditional half
            if not torch.isfinite(corrected).all():
                warnings.warn(f"SelfCorrection: the corrected UNet input after step {step_index} is not finite.")
                return None
            if "sample" in kwargs:
                return args, {**kwargs, "sample": corrected}
            return (corrected, *args[1:]), kwargs

        self.remove()
        self._input_hook = get_unet(pipe).register_forward_pre_hook(hook, with_kwargs=True)

    def _track(self, pipe, step_index: int, batch: int | None = None) -> None:
        """Reuse mode: record the next step's UNet pass (of `batch` latents) only if the next callback corrects
        (outside the window the passes keep no graph); after the last step nothing stays attached."""
        if self.step_size(pipe, step_index + 1) > 0:
            if self.recorder is None:
                self.recorder = UNetPassRecorder(pipe, self.adapter.config.layers, batch).attach()
        else:
            self.remove()

    def remove(self) -> None:
        """Detach reuse mode's and input mode's hooks from the UNet (done by itself after the last step of a run)."""
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None


def layout_term(pipe, prompts: Sequence[str], positions: bool = True, **settings) -> SelfCorrection:
    """The layout term of `prompts`: a `SelfCorrection` by a `scorers.LayoutScorer` (`positions`: False scores
    pairwise relations only), with `settings` its arguments (`scale`, `start`, `stop`, `normalize`, ...). The form of
    the self-correcting pipelines' `layout` setting: `layout_term(pipe, prompts, **layout)`."""
    return SelfCorrection(LayoutScorer(pipe, prompts, positions=positions), prompts, **settings)
