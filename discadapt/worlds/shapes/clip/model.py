"""The world CLIP model: a small `transformers.CLIPModel` (text and image towers) built from `WorldClipSizes`.

Text transformer over the real 49,408-token CLIP vocabulary (bos 49406, eos = pad 49407, 77 positions,
`discadapt.clip_tokenizer`); vision transformer on 32 x 32 images in square patches; both projected to a shared
space. No dropout. Construction is seeded and leaves the caller's global RNG alone.

Example:
    >>> model = make_world_clip(WorldClipSizes.tiny(), seed=0)
    >>> model.config.vision_config.image_size, model.config.text_config.vocab_size
    (32, 49408)
"""

from __future__ import annotations

import math

import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

from ..models import _seeded, text_encoder_config
from .config import MAX_LOGIT_SCALE, TEMPERATURE, WorldClipConfig, WorldClipSizes, _check_int

__all__ = ["logit_scale", "make_world_clip", "token_embedding", "world_clip_config"]


def _sizes_of(sizes) -> WorldClipSizes:
    if sizes is None:
        return WorldClipSizes()
    if isinstance(sizes, WorldClipConfig):
        return sizes.sizes
    if not isinstance(sizes, WorldClipSizes):
        raise ValueError(f"`sizes` is {sizes!r}; pass a WorldClipSizes or a WorldClipConfig.")
    return sizes


def world_clip_config(sizes: WorldClipSizes | WorldClipConfig | None = None, temperature: float = TEMPERATURE):
    """The `transformers.CLIPConfig` of `sizes`: the real CLIP vocabulary and 77 positions, no dropout.

    Args:
        sizes (WorldClipSizes | WorldClipConfig | None): sizes, or a config whose sizes (and temperature) to use;
            None means `WorldClipSizes()`. Default None.
        temperature (float): initial temperature (ignored when `sizes` is a WorldClipConfig). Default 0.07.
    """
    if isinstance(sizes, WorldClipConfig):
        temperature = sizes.temperature
    s = _sizes_of(sizes)
    text = text_encoder_config(s, projection_dim=s.projection_dim)
    vision = CLIPVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=4 * s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
        num_channels=3,
        projection_dim=s.projection_dim,
    )
    return CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=s.projection_dim,
        logit_scale_init_value=math.log(1.0 / temperature),
    )


def make_world_clip(sizes: WorldClipSizes | WorldClipConfig | None = None, seed: int = 0) -> CLIPModel:
    """A freshly initialised world CLIP (same sizes and `seed`, same weights; the global RNG is left alone).

    Args:
        sizes (WorldClipSizes | WorldClipConfig | None): see `world_clip_config`. Default None (`WorldClipSizes()`).
        seed (int): initialisation seed. Default 0.

    Example:
        >>> model = make_world_clip(WorldClipSizes.tiny(), seed=0)
        >>> model.config.vision_config.image_size, model.config.text_config.vocab_size
        (32, 49408)
    """
    _check_int("seed", seed, 0)
    config = world_clip_config(sizes)
    return _seeded(seed, lambda: CLIPModel(config)).eval()


def token_embedding(model: CLIPModel) -> torch.nn.Parameter:
    """The text tower's token embedding `(49408, text_hidden)` (most of the model's parameters)."""
    return model.text_model.embeddings.token_embedding.weight


def logit_scale(model: CLIPModel) -> torch.Tensor:
    """The multiplier of the cosine similarities: the learned scale clamped to [0, log 100] as in CLIP, exponentiated
    (a scalar tensor)."""
    return model.logit_scale.clamp(0, MAX_LOGIT_SCALE).exp()
