"""discadapt: discriminative adapters, probing, tuning and self-correction for diffusers text-to-image UNets."""

from .adapter import AdapterOutput, DiscriminativeAdapter
from .probe import FeatureInfo, FeatureProbe, block_names
from .sampling import SelfCorrectingPipeline, SelfCorrection
from .scoring import denoising_score, encode_images, itm_score
from .text import TextEmbeddings, encode_text
from .tokenizer import clip_tokenizer

__version__ = "0.1.0"

__all__ = [
    "AdapterOutput",
    "DiscriminativeAdapter",
    "FeatureInfo",
    "FeatureProbe",
    "SelfCorrectingPipeline",
    "SelfCorrection",
    "TextEmbeddings",
    "block_names",
    "clip_tokenizer",
    "denoising_score",
    "encode_images",
    "encode_text",
    "itm_score",
]
