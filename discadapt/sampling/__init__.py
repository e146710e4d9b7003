"""Sampling-time methods that wrap a diffusers pipeline's denoising loop."""

from .generate import generate_to_folder
from .pipeline import (
    SelfCorrectingPipeline,
    SelfCorrectionMixin,
    StableDiffusionSelfCorrectionPipeline,
    StableDiffusionXLSelfCorrectionPipeline,
)
from .self_correction import SCHEDULES, SelfCorrection

__all__ = [
    "SCHEDULES",
    "SelfCorrectingPipeline",
    "SelfCorrection",
    "SelfCorrectionMixin",
    "StableDiffusionSelfCorrectionPipeline",
    "StableDiffusionXLSelfCorrectionPipeline",
    "generate_to_folder",
]
