"""Diffusion-DPO (Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization", 2023): the
preference loss of a denoiser on (preferred, rejected) image pairs of one prompt, against a frozen reference.

With the same noise eps and timestep t for both images of a pair, e(x) = || pred(x_t) - target(x) ||^2 (mean over
the latent's values) for the trained model and e_ref(x) for the reference, the loss is

    - log sigmoid( -beta / 2 * [ (e(x_w) - e_ref(x_w)) - (e(x_l) - e_ref(x_l)) ] )

It falls as the trained model denoises the preferred image better, and the rejected one worse, than the reference
does; at the start (model = reference) it is log 2. `beta` sets how far from the reference the model may go (the
paper uses 2000-5000 for Stable Diffusion, errors averaged over the latent as here).

Example:
    >>> loss, accuracy = diffusion_dpo_loss(pred_w, pred_l, ref_w, ref_l, x_w, x_l, noise, t, scheduler, beta=2000)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._precision import full_precision, upcast
from .denoise import denoising_target

__all__ = ["diffusion_dpo_loss"]


def _error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (upcast(pred).to(target.device) - target).pow(2).flatten(1).mean(dim=1)  # (B,)


def diffusion_dpo_loss(
    pred_w: torch.Tensor,
    pred_l: torch.Tensor,
    ref_w: torch.Tensor,
    ref_l: torch.Tensor,
    sample_w: torch.Tensor,
    sample_l: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler,
    beta: float = 2000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Diffusion-DPO loss (module docstring) and the fraction of pairs the model already ranks right.

    Args:
        pred_w, pred_l (`torch.Tensor` of shape `(B, ...)`): the trained model's outputs on the noised preferred and
            rejected latents.
        ref_w, ref_l (`torch.Tensor` of shape `(B, ...)`): the reference model's outputs on the same inputs.
        sample_w, sample_l (`torch.Tensor` of shape `(B, ...)`): the clean latents.
        noise (`torch.Tensor` of shape `(B, ...)`): the noise both were noised with.
        timesteps (`torch.Tensor` of shape `(B,)`, integer): the timesteps.
        scheduler: a diffusers scheduler (its prediction type sets the target).
        beta (float): the KL weight, > 0. Default 2000.

    Returns:
        `(loss, accuracy)`: the scalar loss (float32, autocast off) and, detached, the fraction of pairs whose
        implicit reward margin is positive.
    """
    if not beta > 0:
        raise ValueError(f"`beta` is {beta!r}; pass a number > 0 (2000 is usual for Stable Diffusion).")
    target_w = denoising_target(sample_w, noise, timesteps, scheduler)
    target_l = denoising_target(sample_l, noise, timesteps, scheduler)
    with full_precision(target_w.device):
        model = _error(pred_w, target_w) - _error(pred_l, target_l)  # (B,)
        ref = (_error(ref_w, target_w) - _error(ref_l, target_l)).detach()
        margin = -0.5 * beta * (model - ref)
        return -F.logsigmoid(margin).mean(), (margin > 0).float().mean().detach()
