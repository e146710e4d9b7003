"""The world CLIP's sizes and training configuration, with the defaults of the bundled model in one place.

Example:
    >>> WorldClipConfig(steps=3, sizes=WorldClipSizes.tiny()).to_dict()["sizes.patch_size"]
    8
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..dataset import check_category_weights
from ..models import flat_config, split_sizes
from ..negatives import KINDS
from ..palette import check_image_size

__all__ = [
    "BATCH_SIZE",
    "CATEGORY_WEIGHTS",
    "CHECKPOINT_EVERY",
    "GRAD_CLIP",
    "HARD_NEGATIVE_WEIGHT",
    "KEEP_CHECKPOINTS",
    "LR",
    "MAX_LOGIT_SCALE",
    "NEGATIVES",
    "STEPS",
    "TEMPERATURE",
    "WARMUP_STEPS",
    "WEIGHT_DECAY",
    "WorldClipConfig",
    "WorldClipSizes",
]

# ---- Defaults, in one place. They reproduce the reference run: 6000 steps in 1043 s on 1 shared CPU thread
# (0.17 s/step). Multiple choice against hard negatives, 200 examples per category, test_id / test_ood: single
# 0.87 / 0.55, two_objects 0.81 / 0.54, counting 0.67 / 0.49, spatial 0.38 / 0.27, referring 0.74 / 0.54. Relations
# are not learned (swap_relation 0.53, chance): texts differing only in the relation word embed at cosine 0.9997.
STEPS = 6000
BATCH_SIZE = 32
LR = 2e-3
WEIGHT_DECAY = 0.1
WARMUP_STEPS = 150
NEGATIVES = 4  # hard negatives per example: all of them (the dataset makes 1 to 4)
TEMPERATURE = 0.07  # initial temperature: logit scale log(1 / 0.07), as CLIP
HARD_NEGATIVE_WEIGHT = 1.0
GRAD_CLIP = 1.0
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp of the learned logit scale
CHECKPOINT_EVERY = 250
KEEP_CHECKPOINTS = 2
# Weighted towards the categories whose negatives need binding, counting and relations.
CATEGORY_WEIGHTS = {"single": 0.1, "two_objects": 0.2, "counting": 0.25, "spatial": 0.25, "referring": 0.2}

EVAL_BATCH = 256  # images per forward pass when scoring


def _check_int(name: str, value, minimum: int):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` is {value!r}; pass an int >= {minimum}.")


@dataclass(frozen=True)
class WorldClipSizes:
    """Widths and depths of the two towers.

    Parameter counts (`count_parameters`): the defaults 3,624,225, 3,162,112 of them the text token embedding
    (49,408 x 64); `tiny()` 1,617,889, 1,581,056 of them the token embedding.

    Args:
        image_size (int): image side in pixels, >= 32, a multiple of `patch_size`. Default 32.
        patch_size (int): side of the vision transformer's square patches. Default 4.
        text_hidden (int): text transformer width. Default 64.
        text_layers (int): text transformer layers. Default 2.
        text_heads (int): text attention heads (must divide `text_hidden`). Default 4.
        vision_hidden (int): vision transformer width. Default 96.
        vision_layers (int): vision transformer layers. Default 3.
        vision_heads (int): vision attention heads (must divide `vision_hidden`). Default 4.
        projection_dim (int): width of the shared embedding space. Default 64.
    """

    image_size: int = 32
    patch_size: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    projection_dim: int = 64

    def __post_init__(self):
        check_image_size(self.image_size)
        for f in fields(self):
            _check_int(f.name, getattr(self, f.name), 1)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`patch_size` is {self.patch_size}, which does not divide `image_size` {self.image_size}; pass a "
                "divisor such as 4."
            )
        for tower in ("text", "vision"):
            hidden, heads = getattr(self, f"{tower}_hidden"), getattr(self, f"{tower}_heads")
            if hidden % heads:
                raise ValueError(
                    f"`{tower}_hidden` {hidden} is not a multiple of `{tower}_heads` {heads}; pass heads dividing it."
                )

    @classmethod
    def tiny(cls) -> WorldClipSizes:
        """Smallest sizes that run the whole path (tests)."""
        return cls(
            patch_size=8,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            vision_hidden=32,
            vision_layers=1,
            vision_heads=2,
            projection_dim=32,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WorldClipConfig:
    """Everything that determines the trained weights (a resumed run must match it field for field).

    Args:
        seed (int): seed of initialisation and data, >= 0. Default 0.
        steps (int): optimisation steps, >= 1. Default `STEPS`.
        batch_size (int): examples (images, true captions) per step, >= 2. Default `BATCH_SIZE`.
        lr (float): peak AdamW learning rate, > 0. Default `LR`.
        weight_decay (float): AdamW weight decay of matrices (not of the token embedding), >= 0.
            Default `WEIGHT_DECAY`.
        warmup_steps (int): linear warmup before the cosine decay, >= 0. Default `WARMUP_STEPS`.
        negatives (int): hard negatives per example, 0 to `len(KINDS)` (6; an example has at most one per kind, 1 to 4);
            where an example has more, a seeded subset. Default `NEGATIVES`.
        temperature (float): initial softmax temperature, in (0, 1]: logit scale `log(1 / temperature)`.
            Default `TEMPERATURE`.
        hard_negative_weight (float): weight of the hard-negative term, >= 0. Default `HARD_NEGATIVE_WEIGHT`.
        checkpoint_every (int): steps between checkpoints, >= 1. Default `CHECKPOINT_EVERY`.
        category_weights (dict[str, float]): sampling weights of the caption categories. Default
            `CATEGORY_WEIGHTS`.
        sizes (WorldClipSizes): model sizes. Default `WorldClipSizes()`.
    """

    seed: int = 0
    steps: int = STEPS
    batch_size: int = BATCH_SIZE
    lr: float = LR
    weight_decay: float = WEIGHT_DECAY
    warmup_steps: int = WARMUP_STEPS
    negatives: int = NEGATIVES
    temperature: float = TEMPERATURE
    hard_negative_weight: float = HARD_NEGATIVE_WEIGHT
    checkpoint_every: int = CHECKPOINT_EVERY
    category_weights: dict = field(default_factory=lambda: dict(CATEGORY_WEIGHTS))
    sizes: WorldClipSizes = field(default_factory=WorldClipSizes)

    def __post_init__(self):
        _check_int("seed", self.seed, 0)
        _check_int("steps", self.steps, 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(
                f"`batch_size` is {self.batch_size!r}; pass an int >= 2 (the contrastive loss needs other examples "
                "in the batch)."
            )
        if (
            isinstance(self.negatives, bool)
            or not isinstance(self.negatives, int)
            or not 0 <= self.negatives <= len(KINDS)
        ):
            raise ValueError(f"`negatives` is {self.negatives!r}; pass an int from 0 to {len(KINDS)}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"`lr` is {self.lr!r}; pass a float > 0.")
        for name in ("weight_decay", "hard_negative_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"`{name}` is {value!r}; pass a float >= 0.")
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 1):
            raise ValueError(f"`temperature` is {self.temperature!r}; pass a float in (0, 1], e.g. 0.07.")
        check_category_weights(self.category_weights)
        if not isinstance(self.sizes, WorldClipSizes):
            raise ValueError(f"`sizes` is {self.sizes!r}; pass a WorldClipSizes.")

    def to_dict(self) -> dict:
        """JSON-ready dict (the sizes flattened as `sizes.<field>`)."""
        return flat_config(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorldClipConfig:
        """Inverse of `to_dict`."""
        sizes, rest = split_sizes(data)
        return cls(**rest, sizes=WorldClipSizes(**sizes))
