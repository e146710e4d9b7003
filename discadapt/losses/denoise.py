"""Denoising loss: the diffusion model's own objective, kept while the UNet is tuned for discrimination.

With x_0 the clean latents, eps the noise, t the timestep and abar_t the scheduler's `alphas_cumprod[t]`,
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps is what the UNet saw; its output f is compared with the target of the
scheduler's `config.prediction_type`:

    epsilon        target = eps
    v_prediction   target = v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
    sample         target = x_0

    L = 1/B sum_b w_b * mean_{c,h,w} (f_b - target_b)^2

with w_b = 1, or the min-SNR-gamma weight (Hang et al., ICCV 2023) of SNR_t = abar_t / (1 - abar_t):

    epsilon        w = min(SNR_t, gamma) / SNR_t          (1 where SNR_t = 0, its limit)
    v_prediction   w = min(SNR_t, gamma) / (SNR_t + 1)
    sample         w = min(SNR_t, gamma)

(the same weighting in x_0 space, rewritten for each parameterisation; the paper recommends gamma = 5).
Computed in float32 (float64 for float64 inputs) with autocast disabled.

`denoising_contrast_loss` turns the same errors into a discriminative loss (the denoising score of Diffusion-ITM,
Krojer et al. 2023, as a training signal): for an image noised once and denoised under its caption and k
hard-negative captions, with E_j = mean_{c,h,w} (f_j - target)^2 (`denoising_errors`),

    L = cross-entropy over j of the scores -log(E_j) / tau, towards the caption (j = 0)

so the caption must explain the noise better than its negatives by a ratio of about exp(tau), after which the loss
fades (the log makes tau independent of the timestep's error scale).

Example:
    >>> scheduler = pipe.scheduler                                    # DDPM/DDIM/Euler... with alphas_cumprod
    >>> noisy = scheduler.add_noise(latents, noise, t)
    >>> pred = pipe.unet(noisy, t, encoder_hidden_states).sample
    >>> loss = denoising_loss(pred, latents, noise, t, scheduler, snr_gamma=5.0)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._precision import full_precision, upcast

__all__ = [
    "PREDICTION_TYPES",
    "denoising_contrast_loss",
    "denoising_errors",
    "denoising_loss",
    "denoising_target",
    "min_snr_weights",
    "snr",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _schedule(scheduler, prediction_type: str | None) -> tuple[torch.Tensor, str]:
    """The scheduler's `alphas_cumprod` (T,) and the prediction type (the override, else its config's)."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(abar, torch.Tensor) or abar.ndim != 1:
        raise ValueError(
            f"{type(scheduler).__name__} has no `alphas_cumprod` tensor; pass a diffusers scheduler with a "
            "training noise schedule (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, ...)."
        )
    if prediction_type is None:
        config = getattr(scheduler, "config", None)
        prediction_type = getattr(config, "prediction_type", None) if config is not None else None
        if prediction_type is None and isinstance(config, dict):
            prediction_type = config.get("prediction_type")
    _check_prediction_type(prediction_type)
    return abar, prediction_type


def _check_prediction_type(prediction_type) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"`prediction_type` is {prediction_type!r}; the denoising loss knows {list(PREDICTION_TYPES)}. Set "
            "`scheduler.register_to_config(prediction_type=...)` or pass `prediction_type=`."
        )


def _check_timesteps(timesteps: torch.Tensor, batch: int, num_timesteps: int) -> None:
    if not isinstance(timesteps, torch.Tensor) or timesteps.shape != (batch,):
        shape = tuple(timesteps.shape) if isinstance(timesteps, torch.Tensor) else type(timesteps).__name__
        raise ValueError(f"`timesteps` is {shape}; pass a ({batch},) tensor, one timestep per sample.")
    if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
        raise ValueError(
            f"`timesteps` has dtype {timesteps.dtype}; pass integer training timesteps (indices into "
            "`alphas_cumprod`), e.g. `timesteps.long()`."
        )
    if batch and (timesteps.min() < 0 or timesteps.max() >= num_timesteps):
        raise ValueError(
            f"`timesteps` ranges over [{int(timesteps.min())}, {int(timesteps.max())}], outside the scheduler's "
            f"0..{num_timesteps - 1}."
        )


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio SNR_t = abar_t / (1 - abar_t) at each timestep.

    Args:
        scheduler: a diffusers scheduler with `alphas_cumprod` `(T,)`.
        timesteps (`torch.Tensor` of shape `(B,)`, integer): training timesteps.

    Returns:
        `torch.Tensor` of shape `(B,)`, float64 (`inf` where abar_t = 1).
    """
    abar = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(abar, torch.Tensor) or abar.ndim != 1:
        _schedule(scheduler, "epsilon")  # raises the error about the missing schedule
    _check_timesteps(timesteps, timesteps.shape[0] if isinstance(timesteps, torch.Tensor) else -1, abar.shape[0])
    a = abar.to(device=timesteps.device, dtype=torch.float64)[timesteps]  # (B,)
    return a / (1 - a)


def min_snr_weights(snr_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., 2023) for a prediction type; see the module docstring.

    Args:
        snr_t (`torch.Tensor` of shape `(B,)`): SNR of each sample's timestep (`snr(scheduler, timesteps)`).
        gamma (`float`): the clamp, > 0 (5.0 in the paper).
        prediction_type (`str`): `"epsilon"`, `"v_prediction"` or `"sample"`.

    Returns:
        `torch.Tensor` of shape `(B,)`, in `snr_t`'s dtype.
    """
    _check_prediction_type(prediction_type)
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"`snr_gamma` is {gamma!r}; pass a finite value > 0 (Hang et al. use 5.0), or None.")
    clamped = snr_t.clamp(max=gamma)  # min(SNR, gamma)
    if prediction_type == "epsilon":
        # min(SNR, gamma) / SNR -> 1 as SNR -> 0 (zero terminal SNR); the where keeps 0/0 out of the gradient
        zero = snr_t == 0
        return torch.where(zero, torch.ones_like(snr_t), clamped / torch.where(zero, torch.ones_like(snr_t), snr_t))
    if prediction_type == "v_prediction":
        return clamped / (snr_t + 1)
    return clamped


def denoising_target(
    sample: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    prediction_type: str | None = None,
) -> torch.Tensor:
    """What the model should predict: eps, v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, or x_0.

    Args:
        sample (`torch.Tensor` of shape `(B, ...)`): clean latents x_0.
        noise (`torch.Tensor` of shape `(B, ...)`): the noise eps added to them.
        timesteps (`torch.Tensor` of shape `(B,)`, integer): training timesteps.
        scheduler: a diffusers scheduler with `alphas_cumprod` and `config.prediction_type`.
        prediction_type (`str`, *optional*): overrides the scheduler's.

    Returns:
        `torch.Tensor` of shape `(B, ...)`, float32 (float64 for float64 inputs).
    """
    abar, prediction_type = _schedule(scheduler, prediction_type)
    _check_same_shape(sample=sample, noise=noise)
    _check_timesteps(timesteps, sample.shape[0], abar.shape[0])
    with full_precision(sample.device):
        sample, noise = upcast(sample), upcast(noise).to(sample.device)
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return sample
        a = abar.to(device=sample.device, dtype=torch.float64)[timesteps.to(sample.device)]  # (B,)
        a = a.to(sample.dtype).view(-1, *([1] * (sample.ndim - 1)))  # (B, 1, ..., 1)
        return a.sqrt() * noise - (1 - a).sqrt() * sample


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(set(shapes.values())) > 1 or not isinstance(first, tuple) or len(first) < 2:
        names = ", ".join(f"`{name}`" for name in shapes)
        raise ValueError(
            f"{names} have shapes {shapes}; pass tensors of one shape (B, ...), e.g. latents (B, C, h, w)."
        )


def denoising_errors(
    model_pred: torch.Tensor,
    sample: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    prediction_type: str | None = None,
) -> torch.Tensor:
    """Per-sample mean squared error of the prediction against the scheduler's target (arguments as
    `denoising_loss`); `torch.Tensor` of shape `(B,)`, float32 (float64 for float64 inputs)."""
    _check_same_shape(model_pred=model_pred, sample=sample, noise=noise)
    target = denoising_target(sample, noise, timesteps, scheduler, prediction_type)  # (B, ...)
    with full_precision(target.device):
        return (upcast(model_pred).to(target.device) - target).pow(2).flatten(1).mean(dim=1)


def denoising_loss(
    model_pred: torch.Tensor,
    sample: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    *,
    snr_gamma: float | None = None,
    prediction_type: str | None = None,
) -> torch.Tensor:
    """Mean squared error of the model's prediction against the scheduler's target, optionally min-SNR weighted.

    Args:
        model_pred (`torch.Tensor` of shape `(B, ...)`): the UNet's output on x_t.
        sample (`torch.Tensor` of shape `(B, ...)`): clean latents x_0.
        noise (`torch.Tensor` of shape `(B, ...)`): the noise eps used to make x_t.
        timesteps (`torch.Tensor` of shape `(B,)`, integer): training timesteps.
        scheduler: a diffusers scheduler with `alphas_cumprod` `(T,)` and `config.prediction_type`.
        snr_gamma (`float`, *optional*): min-SNR gamma (5.0 in the paper); None for the unweighted MSE.
        prediction_type (`str`, *optional*): overrides `scheduler.config.prediction_type`.

    Returns:
        `torch.Tensor`, scalar, float32 (float64 for float64 inputs).
    """
    _, prediction_type = _schedule(scheduler, prediction_type)
    per_sample = denoising_errors(model_pred, sample, noise, timesteps, scheduler, prediction_type)  # (B,)
    if snr_gamma is None:
        return per_sample.mean()
    with full_precision(per_sample.device):
        weights = min_snr_weights(snr(scheduler, timesteps), snr_gamma, prediction_type)  # (B,), float64
        return (weights.to(per_sample) * per_sample).mean()


def denoising_contrast_loss(errors: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy towards column 0 of the scores -log(E) / tau (see the module docstring).

    Args:
        errors (`torch.Tensor` of shape `(B, 1 + k)`): `denoising_errors` of one noised image under its caption
            (column 0) and k >= 1 negative captions; `inf` pads a missing negative.
        temperature (`float`): tau > 0, in units of log error ratio.

    Returns:
        `torch.Tensor`, scalar, float32 (float64 for float64 errors).
    """
    if not isinstance(errors, torch.Tensor) or errors.ndim != 2 or errors.shape[1] < 2:
        shape = tuple(errors.shape) if isinstance(errors, torch.Tensor) else type(errors).__name__
        raise ValueError(f"`errors` is {shape}; pass a (B, 1 + k) table with k >= 1 negatives in columns 1..k.")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"`temperature` is {temperature!r}; pass a number > 0 (a log error ratio, e.g. 0.05).")
    with full_precision(errors.device):
        scores = -upcast(errors).clamp(min=torch.finfo(torch.float32).tiny).log() / temperature  # inf -> -inf
        return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device))
