"""The configuration of the world pipeline's training, with the defaults of the bundled pipeline in one place.

Example:
    >>> config = WorldTrainConfig(vae_steps=3, unet_steps=3, sizes=ModelSizes.tiny())
    >>> config.total_steps, config.to_dict()["sizes.unet_channels"]
    (6, [16, 32])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dataset import check_category_weights
from ..models import ModelSizes, flat_config, split_sizes

__all__ = [
    "BATCH_SIZE",
    "CATEGORY_WEIGHTS",
    "CHECKPOINT_EVERY",
    "GRAD_CLIP",
    "KEEP_CHECKPOINTS",
    "LR",
    "RESUMABLE_FIELDS",
    "UNET_STEPS",
    "VAE_BATCH_SIZE",
    "VAE_LR",
    "VAE_STEPS",
    "WorldTrainConfig",
]

# ---- Defaults, in one place. Measured on 2 CPU cores (ENVIRONMENT.md and this module's first runs). ----
VAE_STEPS = 1500  # ~900 steps of MSE + 0.5 L1 gave 97% oracle recall at 64 px; 32 px is easier per step
UNET_STEPS = 12000  # the bundled pipeline's: single-object oracle accuracy 0.91 (0.35 at 2,500 steps)
BATCH_SIZE = 64  # UNet batch: as in the 64-px attempt (loss still falling, stable at lr 8e-4)
VAE_BATCH_SIZE = 32
LR = 8e-4  # AdamW for text encoder + UNet; worked at batch 64 in the 64-px attempt
VAE_LR = 1e-3
WEIGHT_DECAY = 1e-2
WARMUP_STEPS = 100  # linear LR warmup of both phases: a fresh transformer + Adam at 8e-4 can spike otherwise
GRAD_CLIP = 1.0
L1_WEIGHT = 0.5  # MSE alone returned squares round (84.5% vs 97% with + 0.5 L1)
KL_WEIGHT = 1e-8  # 1e-6 left posterior noise larger than the latent spread; we train on posterior means anyway
CAPTION_DROPOUT = 0.1  # share of empty captions, for classifier-free guidance
EMA_DECAY = 0.998  # ~500-step horizon: short runs; diffusers' EMAModel warms the decay up from 0
SCALE_EXAMPLES = 512  # scenes whose latent std sets `scaling_factor`
CHECKPOINT_EVERY = 500
KEEP_CHECKPOINTS = 2
# Weighted towards single objects: the 64-px attempt drew single objects badly; learn to draw first.
CATEGORY_WEIGHTS = {"single": 0.4, "two_objects": 0.2, "counting": 0.15, "spatial": 0.15, "referring": 0.1}

# Fields a resumed run may change: they do not alter the weights of the steps already done (the learning rate
# is constant after warmup, so a longer `unet_steps` extends a run rather than changing it).
RESUMABLE_FIELDS = ("checkpoint_every", "unet_steps")


@dataclass(frozen=True)
class WorldTrainConfig:
    """Everything that determines the trained weights (a resumed run must match it field for field).

    Args:
        seed (int): seed of initialisation, data and noise. Default 0.
        vae_steps (int): VAE optimisation steps, >= 1. Default `VAE_STEPS`.
        unet_steps (int): text encoder + UNet steps, >= 1. Default `UNET_STEPS`.
        batch_size (int): UNet batch. Default `BATCH_SIZE`.
        vae_batch_size (int): VAE batch. Default `VAE_BATCH_SIZE`.
        lr (float): AdamW learning rate of text encoder + UNet. Default `LR`.
        vae_lr (float): AdamW learning rate of the VAE. Default `VAE_LR`.
        weight_decay (float): AdamW weight decay. Default `WEIGHT_DECAY`.
        warmup_steps (int): linear warmup of each phase. Default `WARMUP_STEPS`.
        l1_weight (float), kl_weight (float): VAE loss weights. Defaults `L1_WEIGHT`, `KL_WEIGHT`.
        caption_dropout (float): probability of an empty caption, in [0, 1). Default `CAPTION_DROPOUT`.
        ema_decay (float): EMA decay of the UNet weights, in [0, 1). Default `EMA_DECAY`.
        checkpoint_every (int): steps between checkpoints. Default `CHECKPOINT_EVERY`.
        scale_examples (int): scenes whose latent std sets the VAE `scaling_factor`. Default `SCALE_EXAMPLES`.
        category_weights (dict[str, float]): training mix of caption categories. Default `CATEGORY_WEIGHTS`.
        sizes (ModelSizes): model sizes (and image size). Default `ModelSizes()`.
    """

    seed: int = 0
    vae_steps: int = VAE_STEPS
    unet_steps: int = UNET_STEPS
    batch_size: int = BATCH_SIZE
    vae_batch_size: int = VAE_BATCH_SIZE
    lr: float = LR
    vae_lr: float = VAE_LR
    weight_decay: float = WEIGHT_DECAY
    warmup_steps: int = WARMUP_STEPS
    l1_weight: float = L1_WEIGHT
    kl_weight: float = KL_WEIGHT
    caption_dropout: float = CAPTION_DROPOUT
    ema_decay: float = EMA_DECAY
    checkpoint_every: int = CHECKPOINT_EVERY
    scale_examples: int = SCALE_EXAMPLES
    category_weights: dict = field(default_factory=lambda: dict(CATEGORY_WEIGHTS))
    sizes: ModelSizes = field(default_factory=ModelSizes)

    def __post_init__(self):
        for name in ("vae_steps", "unet_steps", "batch_size", "vae_batch_size", "checkpoint_every", "scale_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; pass an int >= 1.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` is {self.seed!r}; pass an int >= 0.")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` is {self.warmup_steps!r}; pass an int >= 0.")
        for name in ("lr", "vae_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` is {getattr(self, name)!r}; pass a float > 0.")
        for name in ("weight_decay", "l1_weight", "kl_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` is {getattr(self, name)!r}; pass a float >= 0.")
        for name in ("caption_dropout", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`{name}` is {getattr(self, name)!r}; pass a float in [0, 1).")
        check_category_weights(self.category_weights)
        if not isinstance(self.sizes, ModelSizes):
            raise ValueError(f"`sizes` is {self.sizes!r}; pass a ModelSizes.")

    @property
    def total_steps(self) -> int:
        return self.vae_steps + self.unet_steps

    def to_dict(self) -> dict:
        """JSON-ready dict (the sizes flattened as `sizes.<field>`)."""
        return flat_config(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorldTrainConfig:
        """Inverse of `to_dict`."""
        sizes, rest = split_sizes(data)
        return cls(**rest, sizes=ModelSizes(**sizes))
