"""The shapes world's own text-to-image models: a small `AutoencoderKL`, `CLIPTextModel` and
`UNet2DConditionModel`, and the DDPM / DDIM schedules, all real diffusers / transformers classes so that the
trained world is a plain `StableDiffusionPipeline`.

Sizes (`ModelSizes()`, the defaults, for 32 x 32 images; parameter counts measured with `count_parameters`):

- VAE: channels (32, 64, 64), one ResNet layer per block, downsampling 4 (two 2x downsamplings), 4 latent
  channels: 32 x 32 x 3 images <-> 8 x 8 x 4 latents. 0.95M parameters. Factor 4 rather than 2: a 16 x 16
  latent would cost the UNet 4x more per step; at factor 4 the smallest object (8 pixels) still spans 2 x 2
  latent cells.
- Text encoder: CLIP text transformer over the real 49,408-token vocabulary (bos 49406, eos = pad 49407,
  77 positions), hidden size 128, 3 layers, 4 heads. 6.93M parameters, 6.32M of them the token embedding
  (cheap: a lookup).
- UNet: channels (32, 64, 128), one layer per block; no attention at 8 x 8, cross-attention at 4 x 4, 2 x 2 and
  the middle block (`cross_attention_dim` = text hidden size). 4.22M parameters.
- Schedules: DDPM linear betas 1e-4..0.02 over 1000 steps (the DDPM paper's; it ends nearer zero SNR than SD's
  scaled_linear, which matters for small latents), epsilon prediction; DDIM with the same betas for sampling.

A run's models start from `initial_models(sizes, seed)`; `assemble_pipeline` puts trained (or loaded) models together
as the world's `StableDiffusionPipeline`. Both the trainer (`train/`) and the bundle loader (`bundle.py`) build the
pipeline this way. Training configs are stored flat, the sizes as `sizes.<field>` (`flat_config`, `split_sizes`).

Example:
    >>> from discadapt.worlds.shapes.models import ModelSizes, make_unet, count_parameters
    >>> unet = make_unet(ModelSizes.tiny(), seed=0)
    >>> unet.config.sample_size, count_parameters(unet) > 0
    (8, True)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ...tokenizer import clip_tokenizer

__all__ = [
    "CLIP_BOS",
    "CLIP_EOS",
    "CLIP_VOCAB",
    "ModelSizes",
    "assemble_pipeline",
    "count_parameters",
    "flat_config",
    "initial_models",
    "make_text_encoder",
    "make_unet",
    "make_vae",
    "noise_scheduler",
    "sampling_scheduler",
    "split_sizes",
    "text_encoder_config",
    "unet_config",
    "vae_config",
]

CLIP_VOCAB = 49408  # the real CLIP BPE vocabulary (`discadapt.clip_tokenizer`)
CLIP_BOS = 49406
CLIP_EOS = 49407  # also the padding token, as in OpenAI's CLIP
MAX_POSITIONS = 77

# DDPM (Ho et al. 2020) schedule; see the module docstring for why not SD's scaled_linear.
TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END, BETA_SCHEDULE = 1e-4, 0.02, "linear"


@dataclass(frozen=True)
class ModelSizes:
    """Widths and depths of the three models.

    Args:
        image_size (int): image side in pixels. Default 32.
        vae_channels (tuple[int, ...]): VAE block widths; downsampling factor 2 ** (len - 1). Default (32, 64, 64).
        latent_channels (int): VAE latent channels. Default 4.
        text_hidden (int): text encoder width, also the UNet's cross-attention width. Default 128.
        text_layers (int): text encoder layers. Default 3.
        text_heads (int): text encoder attention heads (must divide `text_hidden`). Default 4.
        unet_channels (tuple[int, ...]): UNet block widths, the first at latent resolution without attention, the
            others with cross-attention. Default (32, 64, 128).
        norm_groups (int): GroupNorm groups of VAE and UNet (must divide every width). Default 16.
    """

    image_size: int = 32
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)
    norm_groups: int = 16

    def __post_init__(self):
        object.__setattr__(self, "vae_channels", tuple(int(c) for c in self.vae_channels))
        object.__setattr__(self, "unet_channels", tuple(int(c) for c in self.unet_channels))
        if self.image_size < 32 or self.image_size % self.downsampling:
            raise ValueError(
                f"`image_size` is {self.image_size}; pass a multiple of the VAE downsampling {self.downsampling}, "
                ">= 32."
            )
        if len(self.unet_channels) < 2:
            raise ValueError(f"`unet_channels` is {self.unet_channels}; pass two or more widths.")
        for name in ("vae_channels", "unet_channels"):
            bad = [c for c in getattr(self, name) if c <= 0 or c % self.norm_groups]
            if bad:
                raise ValueError(f"`{name}` has {bad}, not multiples of `norm_groups` {self.norm_groups}.")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"`text_hidden` {self.text_hidden} is not a multiple of `text_heads` {self.text_heads}.")

    @property
    def downsampling(self) -> int:
        """VAE downsampling factor: image side / latent side."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsampling

    @classmethod
    def tiny(cls) -> ModelSizes:
        """Smallest sizes that run the whole path (tests): 3.55M parameters, 3.16M of them token embedding."""
        return cls(vae_channels=(16, 16, 16), text_hidden=64, text_layers=1, text_heads=2, unet_channels=(16, 32))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def vae_config(sizes: ModelSizes) -> dict:
    """`AutoencoderKL` config; `scaling_factor` is set by the trainer once the latents are measured."""
    n = len(sizes.vae_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=sizes.vae_channels,
        layers_per_block=1,
        latent_channels=sizes.latent_channels,
        norm_num_groups=sizes.norm_groups,
        sample_size=sizes.image_size,
        scaling_factor=1.0,
    )


def text_encoder_config(sizes: ModelSizes, projection_dim: int | None = None) -> CLIPTextConfig:
    """`CLIPTextConfig` over the real CLIP vocabulary and 77 positions, no dropout. `sizes` is anything with
    `text_hidden`, `text_layers` and `text_heads` (also the world CLIP's sizes); `projection_dim` defaults to
    `text_hidden`."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=sizes.text_hidden,
        intermediate_size=4 * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=CLIP_BOS,
        eos_token_id=CLIP_EOS,
        pad_token_id=CLIP_EOS,
        projection_dim=sizes.text_hidden if projection_dim is None else projection_dim,
    )


def unet_config(sizes: ModelSizes) -> dict:
    """`UNet2DConditionModel` config: attention everywhere but the first (full latent resolution) block."""
    n = len(sizes.unet_channels)
    return dict(
        sample_size=sizes.latent_size,
        in_channels=sizes.latent_channels,
        out_channels=sizes.latent_channels,
        layers_per_block=1,
        block_out_channels=sizes.unet_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=sizes.text_hidden,
        attention_head_dim=8,
        norm_num_groups=sizes.norm_groups,
    )


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(seed)
        return build()


def make_vae(sizes: ModelSizes, seed: int = 0) -> AutoencoderKL:
    """A freshly initialised VAE (same `seed`, same weights)."""
    return _seeded(seed, lambda: AutoencoderKL(**vae_config(sizes)))


def make_text_encoder(sizes: ModelSizes, seed: int = 0) -> CLIPTextModel:
    """A freshly initialised CLIP text encoder (same `seed`, same weights)."""
    return _seeded(seed, lambda: CLIPTextModel(text_encoder_config(sizes)))


def make_unet(sizes: ModelSizes, seed: int = 0) -> UNet2DConditionModel:
    """A freshly initialised UNet (same `seed`, same weights)."""
    return _seeded(seed, lambda: UNet2DConditionModel(**unet_config(sizes)))


def _schedule() -> dict:
    """The noise schedule shared by training and sampling: linear betas, epsilon prediction."""
    return dict(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        prediction_type="epsilon",
        clip_sample=False,
    )


def noise_scheduler() -> DDPMScheduler:
    """Training schedule: DDPM, linear betas, epsilon prediction."""
    return DDPMScheduler(**_schedule())


def sampling_scheduler() -> DDIMScheduler:
    """Sampling schedule saved with the pipeline: DDIM over the training betas."""
    return DDIMScheduler(**_schedule(), set_alpha_to_one=False, steps_offset=1)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


def initial_models(sizes: ModelSizes, seed: int = 0) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel]:
    """The freshly initialised (VAE, text encoder, UNet) of a run of seed `seed`: seeds `seed`, `seed + 1`,
    `seed + 2`."""
    return make_vae(sizes, seed), make_text_encoder(sizes, seed + 1), make_unet(sizes, seed + 2)


def assemble_pipeline(
    vae: AutoencoderKL, text_encoder: CLIPTextModel, unet: UNet2DConditionModel, scaling_factor: float
) -> StableDiffusionPipeline:
    """The world's `StableDiffusionPipeline` of these models (used as they are, in eval mode): the VAE's
    `scaling_factor` set, the CLIP tokenizer, the DDIM scheduler, no safety checker, progress bar off."""
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(),
        unet=unet.eval(),
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flat_config(config) -> dict:
    """JSON-ready dict of a frozen config dataclass with a `sizes` field, the sizes flattened as `sizes.<field>`
    (`WorldTrainConfig`, `WorldClipConfig`)."""
    data = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "sizes"}
    data.update({f"sizes.{k}": v for k, v in config.sizes.to_dict().items()})
    return json.loads(json.dumps(data))


def split_sizes(data: dict) -> tuple[dict, dict]:
    """Inverse of `flat_config`: the `sizes.<field>` entries of `data` (without the prefix) and the others."""
    sizes = {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith("sizes.")}
    return sizes, {k: v for k, v in data.items() if not k.startswith("sizes.")}
