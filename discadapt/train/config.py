"""Training settings of stage 1 (`ProbeConfig`) and stage 2 (`TuneConfig`): dataclasses with help text and
cross-field checks in `__post_init__`, in the manner of peft's `LoraConfig`.

Everything that determines the trained weights is here (with the pipeline, the data and the number of processes),
so a checkpoint folder can refuse to be resumed with other settings: `to_dict` is what `train_config.json` stores.

Sizes are per process: one optimizer step sees `batch_size * grad_accum * num_processes` samples.

Example:
    >>> config = ProbeConfig(steps=2000, batch_size=16, lr=1e-4, layers=("mid_block", "up_blocks.0"))
    >>> TuneConfig(lora_rank=0)
    Traceback (most recent call last):
    ...
    ValueError: `lora_rank` is 0; pass an int >= 1 (the LoRA rank r; 4 to 64 is usual).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

from ..adapter import DEFAULT_LAYERS, DiscriminativeAdapter
from ..losses import RECLossConfig
from .schedule import LR_SCHEDULES, lr_factor

__all__ = ["TrainConfig", "ProbeConfig", "TuneConfig", "LR_SCHEDULES", "MIXED_PRECISION", "RESUMABLE_FIELDS"]

MIXED_PRECISION = ("no", "bf16", "fp16")
# Fields a resumed run may change without changing the steps already taken. `steps` is among them only under the
# constant schedule (the others' learning rate depends on the total); `ProbeObjective.resumable` enforces that.
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "keep_checkpoints", "num_workers", "log_every")


def _help(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_range(name: str, value) -> tuple[int, int] | None:
    """`value` as a (low, high) tuple of timesteps with 0 <= low < high, or None; else a ValueError naming `name`."""
    if value is None:
        return None
    lo_hi = tuple(value)
    if len(lo_hi) != 2 or not all(_is_int(v) for v in lo_hi) or not 0 <= lo_hi[0] < lo_hi[1]:
        raise ValueError(f"`{name}` is {value!r}; pass (low, high) with 0 <= low < high, e.g. (0, 1000).")
    return lo_hi


@dataclass
class TrainConfig:
    """Settings shared by both stages (see `ProbeConfig` and `TuneConfig` for the stage-specific ones)."""

    # optimisation --------------------------------------------------------------------------------------------
    steps: int = _help("Optimizer steps.", 1000)
    batch_size: int = _help("Samples per process per micro-step (each with 1 + k negatives).", 8)
    grad_accum: int = _help("Micro-steps accumulated per optimizer step.", 1)
    lr: float = _help("AdamW learning rate (adapter and, in stage 2, LoRA).", 1e-4)
    weight_decay: float = _help("AdamW weight decay.", 1e-2)
    lr_warmup_steps: int = _help("Steps of linear learning-rate warmup from 0.", 0)
    lr_schedule: str = _help(f"Learning rate after warmup: one of {LR_SCHEDULES}.", "constant")
    max_grad_norm: float | None = _help("Gradient clipping norm; None turns clipping off.", 1.0)
    seed: int = _help("Seed of initialisation, data order, negatives, timesteps and noise.", 0)
    mixed_precision: str = _help(
        f"One of {MIXED_PRECISION}: autocast with float32 master weights of what trains; frozen weights are cast "
        "to the half type (as diffusers' training scripts do). On CPU only bf16 is available.",
        "no",
    )
    gradient_checkpointing: bool = _help(
        "Recompute UNet activations in the backward pass (stage 2; stage 1 takes no UNet gradients).", False
    )
    checkpoint_every: int = _help("Optimizer steps between checkpoints (one is also written at the end).", 500)
    keep_checkpoints: int = _help("Newest checkpoints kept.", 2)
    log_every: int = _help("Optimizer steps between lines of log.jsonl.", 1)
    num_workers: int = _help("DataLoader worker processes that read and assemble batches.", 0)
    # diffusion -------------------------------------------------------------------------------------------------
    timesteps: tuple[int, ...] | None = _help(
        "Training timesteps to draw from uniformly; None draws from `timestep_range`.", None
    )
    timestep_range: tuple[int, int] | None = _help(
        "[low, high) of uniformly drawn timesteps; None means the scheduler's whole range.", None
    )
    # adapter ---------------------------------------------------------------------------------------------------
    layers: tuple[str, ...] = _help("UNet blocks the adapter reads (a new adapter; ignored with a given one).", None)
    adapter_config: dict = _help(
        "Other DiscriminativeAdapter arguments of a new adapter (hidden_size, num_rec_queries, ...).", factory=dict
    )
    # ITM -------------------------------------------------------------------------------------------------------
    itm_weight: float = _help("Weight of the ITM loss in the total.", 1.0)
    num_neg_captions: int = _help("Negative captions per sample (text side): hard ones first, then random.", 3)
    num_neg_images: int = _help("Negative images per sample (image side): hard ones first, then random.", 1)
    random_negatives: bool = _help(
        "Fill missing negatives with captions/images of other random items (their caption differs).", True
    )
    in_batch_negatives: bool = _help("Add the in-batch table s(image i, caption j) (B^2 UNet passes).", False)
    itm_text_weight: float = _help("Weight of the text-side table within the ITM loss.", 1.0)
    itm_image_weight: float = _help("Weight of the image-side table within the ITM loss.", 1.0)
    itm_batch_weight: float = _help("Weight of the in-batch table within the ITM loss.", 1.0)
    # REC -------------------------------------------------------------------------------------------------------
    rec_weight: float = _help("Weight of the REC loss in the total.", 1.0)
    rec: RECLossConfig = _help("Weights of the REC loss terms and matcher.", factory=RECLossConfig)
    # data ------------------------------------------------------------------------------------------------------
    resolution: int | None = _help(
        "Images are resized to resolution x resolution (no crop, so normalised boxes stay valid); None means the "
        "UNet's sample_size times the VAE factor.",
        None,
    )
    pair_batch_size: int | None = _help("(image, text) pairs per UNet call; None runs all pairs at once.", None)

    def __post_init__(self):
        if self.layers is None:
            self.layers = tuple(DEFAULT_LAYERS)
        if isinstance(self.layers, str):
            self.layers = (self.layers,)
        self.layers = tuple(self.layers)
        if not self.layers or not all(isinstance(name, str) and name for name in self.layers):
            raise ValueError(f"`layers` is {self.layers!r}; name one or more UNet blocks, e.g. ('up_blocks.0',).")
        if isinstance(self.rec, dict):
            self.rec = RECLossConfig(**self.rec)
        if not isinstance(self.rec, RECLossConfig):
            raise ValueError(f"`rec` is a {type(self.rec).__name__}; pass a RECLossConfig (or its dict).")
        if not isinstance(self.adapter_config, dict):
            raise ValueError(f"`adapter_config` is {self.adapter_config!r}; pass a dict of adapter arguments.")
        for name in ("layers", "in_channels", "text_dim", "token_dim"):
            if name in self.adapter_config:
                raise ValueError(
                    f"`adapter_config` sets {name!r}, which comes from the pipeline or `layers`; remove it."
                )
        from_pipeline = ("self", "layers", "in_channels", "text_dim", "token_dim")
        known = [n for n in inspect.signature(DiscriminativeAdapter.__init__).parameters if n not in from_pipeline]
        unknown = sorted(set(self.adapter_config) - set(known))
        if unknown:
            raise ValueError(
                f"`adapter_config` has unknown key(s) {', '.join(map(repr, unknown))}; the adapter's arguments are "
                f"{', '.join(known)}."
            )
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; pass an int >= 1.")
        for name in ("seed", "lr_warmup_steps", "num_workers", "num_neg_captions", "num_neg_images"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"`{name}` is {value!r}; pass an int >= 0.")
        if not _is_number(self.lr) or self.lr <= 0:
            raise ValueError(f"`lr` is {self.lr!r}; pass a learning rate > 0 (1e-4 is usual for the adapter).")
        for name in ("weight_decay", "itm_weight", "rec_weight", "itm_text_weight", "itm_image_weight"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"`{name}` is {value!r}; pass a finite number >= 0 (0 turns the term off).")
        if not _is_number(self.itm_batch_weight) or self.itm_batch_weight < 0:
            raise ValueError(f"`itm_batch_weight` is {self.itm_batch_weight!r}; pass a finite number >= 0.")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise ValueError(f"`max_grad_norm` is {self.max_grad_norm!r}; pass a norm > 0, or None to not clip.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"`lr_schedule` is {self.lr_schedule!r}; pick one of {', '.join(LR_SCHEDULES)}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"`mixed_precision` is {self.mixed_precision!r}; pick one of {', '.join(MIXED_PRECISION)}."
            )
        self._check_timesteps()
        for name in ("resolution", "pair_batch_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"`{name}` is {value!r}; pass an int >= 1, or None.")
        self._check_losses()
        self._check_itm_tables()

    def _check_timesteps(self) -> None:
        if self.timesteps is not None and self.timestep_range is not None:
            raise ValueError(
                f"`timesteps` ({self.timesteps!r}) and `timestep_range` ({self.timestep_range!r}) are both set; pass "
                "one of them."
            )
        if self.timesteps is not None:
            ts = (self.timesteps,) if _is_int(self.timesteps) else tuple(self.timesteps)
            if not ts or not all(_is_int(t) and t >= 0 for t in ts):
                raise ValueError(f"`timesteps` is {self.timesteps!r}; pass one or more integer timesteps >= 0.")
            self.timesteps = ts
        self.timestep_range = _checked_range("timestep_range", self.timestep_range)

    @property
    def denoising_pass(self) -> bool:
        """Whether a term runs the UNet on denoising pairs (stage 2's denoising loss, contrast or grounding)."""
        return False

    def _check_losses(self) -> None:
        if self.itm_weight == 0 and self.rec_weight == 0:
            raise ValueError("`itm_weight` and `rec_weight` are both 0, so nothing trains; set one > 0.")

    def _check_itm_tables(self) -> None:
        if self.itm_weight > 0 and not (
            (self.num_neg_captions and self.itm_text_weight)
            or (self.num_neg_images and self.itm_image_weight)
            or (self.in_batch_negatives and self.itm_batch_weight)
        ):
            raise ValueError(
                "Every ITM table is off (no side has both negatives and a weight > 0): `num_neg_captions` "
                f"{self.num_neg_captions}, `num_neg_images` {self.num_neg_images}, `in_batch_negatives` "
                f"{self.in_batch_negatives}; allow some negatives, or set `itm_weight=0`."
            )

    # serialisation -------------------------------------------------------------------------------------------
    _RECORDED_WHEN_SET: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        """JSON-ready dict of every field (the REC config nested), as `train_config.json` stores it; fields added
        after runs were recorded (`_RECORDED_WHEN_SET`) only when they differ from their default, so that those
        runs still resume."""
        data = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        data = {k: v for k, v in data.items() if not (k in self._RECORDED_WHEN_SET and v == defaults[k])}
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: dict):
        """Inverse of `to_dict`; unknown keys raise a ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}.")
        return cls(**data)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the learning rate at optimizer step `step` (0-based): `schedule.lr_factor` with this
        config's warmup, steps and schedule."""
        return lr_factor(step, self.lr_warmup_steps, self.steps, self.lr_schedule)


@dataclass
class ProbeConfig(TrainConfig):
    """Stage 1, probing: the UNet, VAE and text encoder(s) are frozen; only the adapter trains, on ITM + REC.

    All fields are `TrainConfig`'s; the UNet runs without gradients and stops at the last probed block.
    """


@dataclass
class TuneConfig(TrainConfig):
    """Stage 2, tuning: LoRA on the UNet's attention projections plus the adapter, on ITM + REC + denoising."""

    lora_rank: int = _help("LoRA rank r.", 4)
    lora_alpha: float = _help("LoRA alpha; the update is scaled by alpha / r.", 4.0)
    lora_targets: tuple[str, ...] = _help(
        "UNet module names that get LoRA (peft `target_modules`).", ("to_q", "to_k", "to_v", "to_out.0")
    )
    lora_dropout: float = _help("Dropout on the LoRA input, in [0, 1).", 0.0)
    lora_lr: float | None = _help("Learning rate of the LoRA weights; None means `lr`.", None)
    denoise_weight: float = _help("Weight of the denoising loss in the total (keeps the model generative).", 1.0)
    snr_gamma: float | None = _help("Min-SNR gamma of the denoising loss (5.0 in Hang et al.); None: plain MSE.", None)
    contrast_weight: float = _help(
        "Weight of the denoising-contrast loss: each captioned image, noised once at its denoising timestep, must be "
        "denoised better under its caption than under its hard-negative captions (`losses.denoising_contrast_loss`; "
        "0: off).",
        0.0,
    )
    contrast_temperature: float = _help("Temperature of the denoising-contrast loss, in log error ratio.", 0.05)
    denoise_timestep_range: tuple[int, int] | None = _help(
        "[low, high) of the timesteps at which the denoising loss and the denoising contrast noise their images; None "
        "means the scheduler's whole range (`timestep_range` draws the adapter's).",
        None,
    )
    caption_dropout: float = _help(
        "Share of the denoising pairs whose caption is replaced by the empty one, so that the unconditional branch "
        "classifier-free guidance extrapolates from is trained too, as text-to-image models are (0.1 is usual); "
        "those pairs leave the denoising contrast. 0: off.",
        0.0,
    )
    grounding_weight: float = _help(
        "Weight of the grounding loss on the UNet's cross-attention (`losses.attention_grounding_loss`): in each "
        "denoising pair whose item has boxes with their words (`box_spans`), each phrase's attention should lie inside "
        "its boxes. 0: off.",
        0.0,
    )
    lora_ema_decay: float | None = _help(
        "Decay of an exponential moving average of the LoRA weights (diffusers' `EMAModel`, its decay warmed up from "
        "0); `lora/` then holds the average. None: off, `lora/` holds the last weights.",
        None,
    )

    _RECORDED_WHEN_SET: ClassVar[tuple[str, ...]] = ("caption_dropout", "grounding_weight")

    def __post_init__(self):
        if not _is_int(self.lora_rank) or self.lora_rank < 1:
            raise ValueError(
                f"`lora_rank` is {self.lora_rank!r}; pass an int >= 1 (the LoRA rank r; 4 to 64 is usual)."
            )
        if not _is_number(self.lora_alpha) or self.lora_alpha <= 0:
            raise ValueError(f"`lora_alpha` is {self.lora_alpha!r}; pass a number > 0 (often equal to `lora_rank`).")
        if isinstance(self.lora_targets, str):
            self.lora_targets = (self.lora_targets,)
        self.lora_targets = tuple(self.lora_targets)
        if not self.lora_targets or not all(isinstance(t, str) and t for t in self.lora_targets):
            raise ValueError(
                f"`lora_targets` is {self.lora_targets!r}; name module types to adapt, e.g. ('to_q', 'to_k', "
                "'to_v', 'to_out.0')."
            )
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"`lora_dropout` is {self.lora_dropout!r}; pass a probability in [0, 1).")
        if self.lora_lr is not None and (not _is_number(self.lora_lr) or self.lora_lr <= 0):
            raise ValueError(f"`lora_lr` is {self.lora_lr!r}; pass a learning rate > 0, or None to use `lr`.")
        if not _is_number(self.denoise_weight) or self.denoise_weight < 0:
            raise ValueError(f"`denoise_weight` is {self.denoise_weight!r}; pass a finite number >= 0 (0: off).")
        if self.snr_gamma is not None and (not _is_number(self.snr_gamma) or self.snr_gamma <= 0):
            raise ValueError(f"`snr_gamma` is {self.snr_gamma!r}; pass a value > 0 (5.0 is usual), or None.")
        if not _is_number(self.contrast_weight) or self.contrast_weight < 0:
            raise ValueError(f"`contrast_weight` is {self.contrast_weight!r}; pass a finite number >= 0 (0: off).")
        if not _is_number(self.contrast_temperature) or self.contrast_temperature <= 0:
            raise ValueError(
                f"`contrast_temperature` is {self.contrast_temperature!r}; pass a number > 0 (0.05: a 5% error ratio)."
            )
        self.denoise_timestep_range = _checked_range("denoise_timestep_range", self.denoise_timestep_range)
        if not _is_number(self.caption_dropout) or not 0 <= self.caption_dropout < 1:
            raise ValueError(
                f"`caption_dropout` is {self.caption_dropout!r}; pass a probability in [0, 1) (0.1 is usual)."
            )
        if not _is_number(self.grounding_weight) or self.grounding_weight < 0:
            raise ValueError(f"`grounding_weight` is {self.grounding_weight!r}; pass a finite number >= 0 (0: off).")
        if self.grounding_weight > 0 and self.gradient_checkpointing:
            raise ValueError(
                "`grounding_weight` > 0 records the cross-attention maps, which gradient checkpointing would record "
                "again in the backward pass; set `gradient_checkpointing=False` or `grounding_weight=0`."
            )
        if self.lora_ema_decay is not None and (not _is_number(self.lora_ema_decay) or not 0 < self.lora_ema_decay < 1):
            raise ValueError(
                f"`lora_ema_decay` is {self.lora_ema_decay!r}; pass a decay in (0, 1) (0.998: ~500 steps), or None."
            )
        super().__post_init__()

    @property
    def denoising_pass(self) -> bool:
        return any(w > 0 for w in (self.denoise_weight, self.contrast_weight, self.grounding_weight))

    def _check_losses(self) -> None:
        weights = ("itm_weight", "rec_weight", "denoise_weight", "contrast_weight", "grounding_weight")
        if not any(getattr(self, name) for name in weights):
            raise ValueError(f"`{'`, `'.join(weights)}` are all 0, so nothing trains; set one > 0.")
        if self.contrast_weight > 0 and self.num_neg_captions == 0:
            raise ValueError(
                "`contrast_weight` is > 0 but `num_neg_captions` is 0: the denoising contrast needs negative "
                "captions; set `num_neg_captions` >= 1 or `contrast_weight=0`."
            )
