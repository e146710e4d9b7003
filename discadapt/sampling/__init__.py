"""Sampling-time methods that wrap a diffusers pipeline's denoising loop: self-correction, region prompts."""

from .generate import generate_to_folder
from .pipeline import (
    SelfCorrectingPipeline,
    SelfCorrectionMixin,
    StableDiffusionSelfCorrectionPipeline,
    StableDiffusionXLSelfCorrectionPipeline,
)
from .regions import Region, RegionPrompts, box_mask, generate_with_regions
from .self_correction import SCHEDULES, SelfCorrection, layout_term

__all__ = [
    "SCHEDULES",
    "Region",
    "RegionPrompts",
    "SelfCorrectingPipeline",
    "SelfCorrection",
    "SelfCorrectionMixin",
    "StableDiffusionSelfCorrectionPipeline",
    "StableDiffusionXLSelfCorrectionPipeline",
    "box_mask",
    "generate_to_folder",
    "generate_with_regions",
    "layout_term",
]
