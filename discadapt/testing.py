"""Offline pipelines for tests, examples and benchmarks.

`tiny_sd_pipeline` and `tiny_sdxl_pipeline` build complete, seeded diffusers pipelines in about a second,
with the real CLIP tokenizer (`discadapt.clip_tokenizer`) and random weights. `unet_config` returns the
real UNet configs of Stable Diffusion 1.5, 2.1 and SDXL, so the probe and the adapter can be checked on
the real channel widths and block layouts without downloading any weights. `tiny_clip_folder`,
`tiny_aesthetic_head_file`, `tiny_blip_vqa_folder`, `tiny_owlv2_folder` and `tiny_owlvit_folder`
(`testing_evaluators.py`) write tiny random evaluator models to folders, for `discadapt.evaluators` and
`bench run --metric`.

Example:
    >>> from discadapt.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline(seed=0)
    >>> image = pipe("a red circle", num_inference_steps=2, output_type="pil").images[0]
"""

from __future__ import annotations

import copy

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .testing_evaluators import (
    tiny_aesthetic_head_file,
    tiny_blip_vqa_folder,
    tiny_clip_folder,
    tiny_owlv2_folder,
    tiny_owlvit_folder,
)
from .tokenizer import clip_tokenizer

__all__ = [
    "unet_config",
    "REAL_UNET_CONFIGS",
    "assert_same_state",
    "random_lora",
    "sd_pipeline",
    "sdxl_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_aesthetic_head_file",
    "tiny_blip_vqa_folder",
    "tiny_clip_folder",
    "tiny_owlv2_folder",
    "tiny_owlvit_folder",
]

# Architecture fields of the published UNet configs (stable-diffusion-v1-5, stable-diffusion-2-1,
# stable-diffusion-xl-base-1.0); everything not listed is UNet2DConditionModel's default.
_SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
REAL_UNET_CONFIGS: dict[str, dict] = {
    "sd15": _SD15,
    "sd21": {
        **_SD15,
        "sample_size": 96,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
        "upcast_attention": True,
    },
    "sdxl": dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}


def unet_config(name: str, **overrides) -> dict:
    """Architecture config of a real UNet: `"sd15"`, `"sd21"` or `"sdxl"`.

    Args:
        name (`str`): which model.
        **overrides: fields to change, e.g. `transformer_layers_per_block=1` for a lighter SDXL with the
            real widths.

    Returns:
        `dict` for `UNet2DConditionModel.from_config`.
    """
    if name not in REAL_UNET_CONFIGS:
        raise ValueError(f"`name` is {name!r}; known UNet configs: {sorted(REAL_UNET_CONFIGS)}.")
    return {**copy.deepcopy(REAL_UNET_CONFIGS[name]), **overrides}


def _text_encoder(hidden_size: int, seed: int, num_layers: int, projection_dim: int | None = None):
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=projection_dim or hidden_size,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModel if projection_dim is None else CLIPTextModelWithProjection
    return cls(config).eval()


def _tiny_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    ).eval()


def _sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def sd_pipeline(unet: UNet2DConditionModel | dict, seed: int = 0, text_layers: int = 1) -> StableDiffusionPipeline:
    """A `StableDiffusionPipeline` around `unet` (a model or a config), with a random text encoder of the
    width its cross-attention expects (`text_layers` layers) and the tiny VAE.

    Used to put an SD-sized UNet (e.g. `unet_config("sd15")`) in a pipeline without downloading anything.
    """
    if isinstance(unet, dict):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet)
    unet.eval()
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(seed),
        text_encoder=_text_encoder(unet.config.cross_attention_dim, seed, text_layers),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A complete Stable Diffusion pipeline with about 4M random parameters, built offline.

    UNet with three resolutions (16, 8 and 4 for its default 16x16 latents, i.e. 32x32 images),
    cross-attention width 32, a 2-layer CLIP text encoder over the real CLIP vocabulary, a VAE that
    downsamples by 2, and DDIM.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    return sd_pipeline(unet, seed=seed, text_layers=2)


def sdxl_pipeline(unet: UNet2DConditionModel | dict, seed: int = 0, text_layers: int = 1) -> StableDiffusionXLPipeline:
    """A `StableDiffusionXLPipeline` around `unet` (a model or a config), with random text encoders of the widths
    its conditioning expects (`text_layers` layers each), the tiny VAE and Euler.

    The widths come from the UNet config: `text_encoder_2`'s projection gives the pooled `text_embeds`
    (`projection_class_embeddings_input_dim - 6 * addition_time_embed_dim`), and the two encoders' hidden
    states are concatenated to `cross_attention_dim` (SDXL: 768 + 1280 = 2048).
    """
    if isinstance(unet, dict):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet)
    config = unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(seed),
        text_encoder=_text_encoder(config.cross_attention_dim - pooled, seed, text_layers),
        text_encoder_2=_text_encoder(pooled, seed + 1, text_layers, projection_dim=pooled),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A complete SDXL-shaped pipeline built offline: two text encoders (the second with a projection that
    gives the pooled embedding), a UNet with `text_time` added conditioning, the tiny VAE and Euler."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8,
        cross_attention_dim=64,
        norm_num_groups=16,
    )
    return sdxl_pipeline(unet, seed=seed, text_layers=2)


def random_lora(pipe, folder, seed: int = 0, rank: int = 2, targets=("to_q", "to_v")):
    """Save a LoRA of `pipe`'s UNet with random, non-zero weights (peft's `init_lora_weights=False`) to `folder` in
    diffusers' format, as trained LoRAs are saved; `pipe` is left without it. Returns `folder` as a Path."""
    from pathlib import Path

    from peft import LoraConfig

    from .train.tune import save_lora

    copied = copy.copy(pipe)  # the same components but a copy of the UNet, which takes the LoRA
    copied.unet = copy.deepcopy(pipe.unet)
    torch.manual_seed(seed)
    copied.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False))
    save_lora(copied, folder)
    return Path(folder)


def assert_same_state(a, b, path: str = "state") -> None:
    """Assert that two nested dicts / lists / tuples of tensors and plain values are equal, tensors bit for bit
    (`torch.equal`); the message names the first differing `path`, e.g. `state.unet.conv_in.weight`."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path
