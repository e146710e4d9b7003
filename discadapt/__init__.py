"""discadapt: discriminative adapters, probing, tuning and self-correction for diffusers text-to-image UNets."""

import logging as _logging

# transformers' notice that its image processors fall back to PIL without torchvision: discadapt keeps torchvision
# out on purpose (README, install notes), and importing diffusers prints the notice on every import
_logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision (not installed)" not in record.getMessage()
)

from .adapter import AdapterOutput, DiscriminativeAdapter  # noqa: E402
from .probe import FeatureInfo, FeatureProbe, block_names  # noqa: E402
from .sampling import SelfCorrectingPipeline, SelfCorrection  # noqa: E402
from .scoring import denoising_score, encode_images, itm_score  # noqa: E402
from .text import TextEmbeddings, encode_text  # noqa: E402
from .tokenizer import clip_tokenizer  # noqa: E402

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
