"""Sampling-time methods that wrap a diffusers pipeline's denoising loop."""

from .generate import generate_to_folder
from .pipeline import SelfCorrectingPipeline
from .self_correction import SCHEDULES, SelfCorrection

__all__ = ["SCHEDULES", "SelfCorrectingPipeline", "SelfCorrection", "generate_to_folder"]
