"""What discadapt needs from a pipeline besides its UNet: the text side.

One place knows how SD-style and SDXL-style pipelines encode prompts:
- `encoder_hidden_states` (B, L, D): what the UNet's cross-attention reads (`D = unet.config.cross_attention_dim`);
  the adapter's REC token-alignment head reads them too, so no second text model is needed.
- `pooled` (B, P): one vector per prompt, the target space of the adapter's ITM queries: CLIP's pooled output
  for SD 1.x/2.x, the projected `text_embeds` of `text_encoder_2` for SDXL.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from diffusers import UNet2DConditionModel

__all__ = ["TextEmbeddings", "encode_text", "get_unet", "pooled_dim", "unet_text_kwargs", "SUPPORTED_PIPELINES"]

SUPPORTED_PIPELINES = (
    "pipelines built on a UNet2DConditionModel with CLIP text encoders: StableDiffusionPipeline (SD 1.x, 2.x), "
    "StableDiffusionXLPipeline, and their img2img/inpaint variants"
)


@dataclasses.dataclass
class TextEmbeddings:
    """Prompt encodings: `encoder_hidden_states` (B, L, D), `pooled` (B, P), `mask` (B, L) with 1 on real
    tokens; `is_sdxl` when the UNet also takes `pooled` as added conditioning (`text_embeds`)."""

    encoder_hidden_states: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor
    is_sdxl: bool = False

    def __len__(self) -> int:
        return self.encoder_hidden_states.shape[0]

    def index(self, idx) -> TextEmbeddings:
        return TextEmbeddings(self.encoder_hidden_states[idx], self.pooled[idx], self.mask[idx], self.is_sdxl)


def get_unet(pipe) -> UNet2DConditionModel:
    """`pipe.unet`, or a ValueError naming the pipeline and what is supported."""
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, UNet2DConditionModel):
        found = "no `unet`" if unet is None else f"a {type(unet).__name__} as `unet`"
        raise ValueError(f"`pipe` is a {type(pipe).__name__} with {found}; discadapt supports {SUPPORTED_PIPELINES}.")
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ValueError(
            f"`pipe` is a {type(pipe).__name__} without `text_encoder`/`tokenizer`; discadapt supports "
            f"{SUPPORTED_PIPELINES}."
        )
    return unet


def _is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def pooled_dim(pipe) -> int:
    """Width of the pooled prompt embedding that the adapter's ITM queries are compared with."""
    get_unet(pipe)
    if _is_sdxl(pipe):
        return pipe.text_encoder_2.config.projection_dim
    return pipe.text_encoder.config.hidden_size


def encode_text(pipe, prompts: list[str]) -> TextEmbeddings:
    """Encode `prompts` exactly as the pipeline does for its conditional branch (no classifier-free guidance).

    Args:
        pipe: a supported diffusers pipeline (see `SUPPORTED_PIPELINES`).
        prompts (`list[str]`): B prompts.
    """
    unet = get_unet(pipe)
    device = unet.device
    limit = pipe.tokenizer.model_max_length
    tokens = pipe.tokenizer(prompts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    long = [p for p, ids in zip(prompts, pipe.tokenizer(prompts).input_ids) if len(ids) > limit]
    if long:  # as diffusers' pipelines do
        warnings.warn(
            f"{len(long)} prompt(s) exceed the text encoder's {limit} tokens and are truncated, e.g. {long[0][:80]!r}.",
            stacklevel=2,
        )
    mask = tokens.attention_mask.to(device)
    if _is_sdxl(pipe):
        hidden, _, pooled, _ = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return TextEmbeddings(hidden.to(unet.dtype), pooled.to(unet.dtype), mask, is_sdxl=True)
    # Same call as StableDiffusionPipeline.encode_prompt, keeping the pooled output it drops.
    encoder = pipe.text_encoder
    use_mask = getattr(encoder.config, "use_attention_mask", False)
    out = encoder(tokens.input_ids.to(device), attention_mask=mask if use_mask else None)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return TextEmbeddings(out.last_hidden_state.to(unet.dtype), pooled.to(unet.dtype), mask)


def unet_text_kwargs(pipe, text: TextEmbeddings, latents: torch.Tensor) -> dict:
    """Extra UNet inputs that come from the text: for SDXL, `added_cond_kwargs` with the pooled text and the
    micro-conditioning `time_ids` (original size, crop (0, 0), target size: the image's size in pixels); for
    SD 1.x/2.x nothing. `latents` (B, C, h, w) give the size."""
    if not text.is_sdxl:
        return {}
    h, w = (s * pipe.vae_scale_factor for s in latents.shape[-2:])
    time_ids = torch.tensor([h, w, 0, 0, h, w], device=latents.device, dtype=text.pooled.dtype)
    return {"added_cond_kwargs": {"text_embeds": text.pooled, "time_ids": time_ids.expand(len(text), 6)}}
