"""Sampling-time methods that wrap a diffusers pipeline's denoising loop."""

from .self_correction import SCHEDULES, SelfCorrection

__all__ = ["SCHEDULES", "SelfCorrection"]
