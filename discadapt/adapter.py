"""The discriminative adapter of DPT (Qu et al., CVPR 2024): UNet features -> ITM embeddings and REC boxes.

    features of L probed blocks, each (B, C_l, h_l, w_l)
      -> 1x1 conv to `hidden_size`, resized to a common grid (h, w), summed     (B, D, h, w)
      -> tokens + 2D sine position embedding + timestep embedding               (B, h*w, D)
      (`read_text=True`: + the prompt's L token embeddings, projected to D      (B, h*w + L, D))
      -> transformer encoder                                                     (B, h*w [+ L], D)  "memory"
      -> transformer decoder over Q_itm + Q_rec learned queries                  (B, Q, D)
      ITM queries -> projection into the pooled text space, L2-normalised       (B, Q_itm, P)
      REC queries -> box (cx, cy, w, h) in [0, 1]                                (B, Q_rec, 4)
                  -> logits [referred object, no object]                        (B, Q_rec, 2)
                  -> alignment embedding (MDETR-style, with the prompt tokens)   (B, Q_rec, A)

The ITM score of an (image, text) pair is `exp(logit_scale) * max_q cos(itm_embeds[q], pooled_text)`, with the
UNet conditioned on that text: by default the text reaches the adapter only through the UNet's cross-attention (DPT's
design, which probes what the UNet understands); with `read_text=True` the encoder also reads the prompt's tokens, so
the queries can compare image features with the words themselves, as BLIP's ITM head does. Sizes come from the UNet
and the text encoder: build one with `DiscriminativeAdapter.for_pipeline(pipe, layers=[...])`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_1d_sincos_pos_embed_from_grid
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from safetensors import safe_open
from torch import nn

from .kernels import adapter_intake, compute_dtype, itm_logits
from .probe import FeatureProbe
from .text import TextEmbeddings, get_unet, pooled_dim

__all__ = ["DiscriminativeAdapter", "AdapterOutput", "DEFAULT_LAYERS", "ITM_TEXT"]

DEFAULT_LAYERS = ("up_blocks.0",)
ITM_TEXT = ("pooled", "tokens")
_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_REQUIRED = ("layers", "in_channels", "text_dim", "token_dim")  # config.json keys without a default


def _kind(value) -> str | None:
    """The kind of a config.json value, as `_check_config` compares them."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "list of str"
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "list of int"
    return None if value is None else type(value).__name__


_KINDS = {  # config.json key -> accepted kinds
    "layers": {"list of str"},
    "in_channels": {"list of int"},
    "grid_size": {"int", None},
    "dropout": {"int", "number"},
    "logit_scale_init": {"int", "number"},
    "itm_text": {"str"},
}


def _check_config(path: str) -> None:
    """A ValueError naming `path` and the key when the saved config lacks a required key or holds a wrong type."""
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read ({err}); save the adapter again with save_pretrained.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a {type(config).__name__}, not a JSON object; save the adapter again.")
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(map(repr, missing))} (required: {', '.join(_REQUIRED)}); save the adapter again "
            "with save_pretrained, or add the key."
        )
    for name, parameter in inspect.signature(DiscriminativeAdapter.__init__).parameters.items():
        if name == "self" or name not in config:
            continue
        allowed = _KINDS.get(name) or {_kind(parameter.default) if parameter.default is not parameter.empty else "int"}
        if _kind(config[name]) not in allowed:
            want = " or ".join("null" if k is None else k for k in sorted(allowed, key=str))
            raise ValueError(
                f"{path} has {name!r}: {config[name]!r}; it must be {'an' if want[0] in 'aeiou' else 'a'} {want}. Fix "
                "the file, or save the adapter again with save_pretrained."
            )


@dataclass
class AdapterOutput(BaseOutput):
    """Outputs of `DiscriminativeAdapter.forward`.

    Args:
        itm_embeds (`torch.Tensor` of shape `(B, Q_itm, P)`): L2-normalised ITM query embeddings.
        boxes (`torch.Tensor` of shape `(B, Q_rec, 4)`): predicted boxes (cx, cy, w, h), normalised to [0, 1].
        rec_logits (`torch.Tensor` of shape `(B, Q_rec, 2)`): logits of [referred object, no object].
        rec_embeds (`torch.Tensor` of shape `(B, Q_rec, A)`): L2-normalised query side of token alignment.
        token_embeds (`torch.Tensor` of shape `(B, L, A)`, *optional*): L2-normalised token side of token
            alignment, when `text_tokens` were given.
    """

    itm_embeds: torch.Tensor
    boxes: torch.Tensor
    rec_logits: torch.Tensor
    rec_embeds: torch.Tensor
    token_embeds: torch.Tensor | None = None


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def sine_position_embedding(dim: int, height: int, width: int, device=None) -> torch.Tensor:
    """2D sine position embedding `(height * width, dim)`: half the channels encode the row, half the column,
    with positions on a fixed scale (0..16) so that grids of different sizes share one frame."""
    if dim % 4:
        raise ValueError(f"`hidden_size` is {dim}; the 2D sine embedding needs a multiple of 4.")
    rows = (torch.arange(height, dtype=torch.float64, device=device) + 0.5) * (16.0 / height)
    cols = (torch.arange(width, dtype=torch.float64, device=device) + 0.5) * (16.0 / width)
    emb_r = get_1d_sincos_pos_embed_from_grid(dim // 2, rows, output_type="pt")  # (h, dim/2)
    emb_c = get_1d_sincos_pos_embed_from_grid(dim // 2, cols, output_type="pt")  # (w, dim/2)
    grid = torch.cat([emb_r[:, None].expand(height, width, -1), emb_c[None].expand(height, width, -1)], dim=-1)
    return grid.reshape(height * width, dim).float()


class DiscriminativeAdapter(ModelMixin, ConfigMixin):
    """Discriminative adapter over probed UNet features (DPT).

    Args:
        layers (`Sequence[str]`): probed UNet module paths, in the order features are given.
        in_channels (`Sequence[int]`): channels of each probed feature map.
        text_dim (`int`): width P of the pipeline's pooled prompt embedding (ITM target space).
        token_dim (`int`): width D of the prompt token embeddings (`unet.config.cross_attention_dim`).
        hidden_size (`int`, defaults to 256): width of the adapter's transformer.
        num_heads (`int`, defaults to 8): attention heads.
        encoder_layers (`int`, defaults to 1): transformer encoder layers over the feature tokens.
        decoder_layers (`int`, defaults to 2): transformer decoder layers over the queries.
        num_itm_queries (`int`, defaults to 8): ITM queries (score = max over them).
        num_rec_queries (`int`, defaults to 8): REC (box) queries.
        align_dim (`int`, defaults to 64): width of the token-alignment space.
        grid_size (`int`, *optional*): side of the common token grid; defaults to the smallest probed map.
        dropout (`float`, defaults to 0.0): dropout inside the transformer layers.
        logit_scale_init (`float`, defaults to log(1/0.07)): initial log of the ITM logit scale (as CLIP).
        itm_text (`str`, defaults to "pooled"): the text side of ITM, `text_target`: "pooled", the pipeline's pooled
            prompt embedding (DPT; `text_dim` = its width), or "tokens", the mean of the prompt's token embeddings
            over its real tokens (`text_dim` = `token_dim`), for text encoders whose pooled output was never
            trained to tell prompts apart (the shapes world's, trained only through the UNet's cross-attention).
        read_text (`bool`, defaults to False): the encoder also reads the prompt's token embeddings (`text_tokens`
            of `forward`, projected to `hidden_size`, with a learned type embedding), not only the UNet features.
    """

    @register_to_config
    def __init__(
        self,
        layers: Sequence[str],
        in_channels: Sequence[int],
        text_dim: int,
        token_dim: int,
        hidden_size: int = 256,
        num_heads: int = 8,
        encoder_layers: int = 1,
        decoder_layers: int = 2,
        num_itm_queries: int = 8,
        num_rec_queries: int = 8,
        align_dim: int = 64,
        grid_size: int | None = None,
        dropout: float = 0.0,
        logit_scale_init: float = math.log(1 / 0.07),
        itm_text: str = "pooled",
        read_text: bool = False,
    ):
        super().__init__()
        if itm_text not in ITM_TEXT:
            raise ValueError(f"`itm_text` is {itm_text!r}; pick one of {', '.join(ITM_TEXT)}.")
        if itm_text == "tokens" and text_dim != token_dim:
            raise ValueError(
                f'`itm_text` is "tokens", so `text_dim` ({text_dim}) must equal `token_dim` ({token_dim}): ITM '
                "compares the queries with token embeddings."
            )
        if len(layers) != len(in_channels) or not layers:
            raise ValueError(
                f"`layers` ({list(layers)}) and `in_channels` ({list(in_channels)}) must be non-empty and of equal "
                "length."
            )
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"`hidden_size` ({hidden_size}) must be a multiple of `num_heads` ({num_heads}) and of 4.")
        self.proj = nn.ModuleList(nn.Conv2d(c, hidden_size, kernel_size=1) for c in in_channels)
        self.time_proj = Timesteps(hidden_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden_size, hidden_size)

        def layer(cls):
            return cls(hidden_size, num_heads, 4 * hidden_size, dropout, batch_first=True, norm_first=True)

        self.encoder = nn.TransformerEncoder(
            layer(nn.TransformerEncoderLayer), encoder_layers, enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(
            layer(nn.TransformerDecoderLayer), decoder_layers, norm=nn.LayerNorm(hidden_size)
        )
        self.queries = nn.Parameter(torch.randn(num_itm_queries + num_rec_queries, hidden_size) * 0.02)
        self.itm_head = nn.Linear(hidden_size, text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.box_head = _mlp([hidden_size, hidden_size, hidden_size, 4])
        self.class_head = nn.Linear(hidden_size, 2)
        self.align_query = nn.Linear(hidden_size, align_dim)
        self.align_token = nn.Linear(token_dim, align_dim)
        if read_text:
            self.text_proj = nn.Linear(token_dim, hidden_size)
            self.text_type = nn.Parameter(torch.zeros(hidden_size))

    # construction and checks ------------------------------------------------------------------------------
    @classmethod
    def for_pipeline(cls, pipe, layers: str | Sequence[str] = DEFAULT_LAYERS, **config) -> DiscriminativeAdapter:
        """An adapter whose sizes match `pipe` (its UNet's probed channels, its text encoders' widths).

        Args:
            pipe: a diffusers pipeline with a `UNet2DConditionModel` (SD 1.x/2.x, SDXL).
            layers (`str` or `Sequence[str]`, defaults to `("up_blocks.0",)`): UNet blocks to probe.
            **config: other constructor arguments (`hidden_size`, `num_itm_queries`, ...).
        """
        unet = get_unet(pipe)
        layers = [layers] if isinstance(layers, str) else list(layers)
        info = FeatureProbe(unet, layers).describe()
        tokens = config.get("itm_text", "pooled") == "tokens"
        adapter = cls(
            layers=layers,
            in_channels=[info[name].channels for name in layers],
            text_dim=unet.config.cross_attention_dim if tokens else pooled_dim(pipe),
            token_dim=unet.config.cross_attention_dim,
            **config,
        )
        return adapter.to(device=unet.device)

    def check_pipeline(self, pipe) -> None:
        """Raise a ValueError if this adapter was built for another UNet or text encoder than `pipe`'s."""
        unet = get_unet(pipe)
        info = FeatureProbe(unet, self.config.layers).describe()
        found = [info[name].channels for name in self.config.layers]
        if list(self.config.in_channels) != found:
            raise ValueError(
                f"This adapter expects features with channels {list(self.config.in_channels)} from "
                f"{list(self.config.layers)}, but this pipeline's UNet gives {found}; build one with "
                "DiscriminativeAdapter.for_pipeline(pipe, layers=...)."
            )
        expected = (self.config.text_dim, self.config.token_dim)
        tokens = self.config.itm_text == "tokens"
        found_text = (unet.config.cross_attention_dim if tokens else pooled_dim(pipe), unet.config.cross_attention_dim)
        if expected != found_text:
            raise ValueError(
                f"This adapter expects text widths (pooled, tokens) = {expected}, but this pipeline gives "
                f"{found_text}; it was built for another text encoder."
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load what `save_pretrained` wrote. Weights are read from safetensors only: a pickled `.bin` is
        never unpickled from a user path, and a corrupt file, a config.json lacking a key or holding a value of the
        wrong type, or a missing folder are reported (naming the path) before diffusers reads them."""
        kwargs.pop("use_safetensors", None)  # diffusers' pipeline loader passes it; safetensors only, always
        name, sub = os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or ""
        folder = os.path.join(name, sub) if sub else name
        if not os.path.isdir(folder):
            hub_id = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name) and not os.path.exists(name)
            if hub_id:  # perhaps a Hub repository
                try:
                    return super().from_pretrained(pretrained_model_name_or_path, use_safetensors=True, **kwargs)
                except (OSError, ValueError):
                    pass
            what = "it is a file" if os.path.exists(folder) else "no such folder"
            raise ValueError(
                f"no adapter at {folder!r}: {what}{' (nor a reachable Hub repository)' if hub_id else ''}; pass the "
                "folder save_pretrained wrote (e.g. `discadapt probe`'s out/adapter)."
            )
        _check_config(os.path.join(folder, "config.json"))
        weights = os.path.join(folder, _WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise ValueError(
                f"No {_WEIGHTS_NAME} in {folder} (found: {sorted(os.listdir(folder))}). discadapt loads adapter "
                "weights from safetensors only; convert a trusted .bin with "
                "safetensors.torch.save_file(torch.load(path, weights_only=True), ...)."
            )
        try:
            with safe_open(weights, framework="pt"):
                pass
        except Exception as err:
            raise ValueError(f"{weights} is not a valid safetensors file ({err}); save the adapter again.") from err
        return super().from_pretrained(pretrained_model_name_or_path, use_safetensors=True, **kwargs)

    # forward --------------------------------------------------------------------------------------------------
    def _grid(self, maps: list[torch.Tensor]) -> tuple[int, int]:
        if self.config.grid_size:
            return self.config.grid_size, self.config.grid_size
        return min(m.shape[-2] for m in maps), min(m.shape[-1] for m in maps)

    def forward(
        self,
        features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
        timestep: torch.Tensor | int,
        text_tokens: torch.Tensor | None = None,
    ) -> AdapterOutput:
        """
        Args:
            features: probed maps `{layer: (B, C_l, h_l, w_l)}` (as `FeatureProbe` returns) or a list in
                `config.layers` order.
            timestep (`torch.Tensor` of shape `(B,)` or `int`): the diffusion timestep of the features.
            text_tokens (`torch.Tensor` of shape `(B, L, token_dim)`, *optional*): prompt token embeddings
                (`encoder_hidden_states`) for the REC token-alignment head; required with `read_text=True`.
        """
        names = self.config.layers
        if isinstance(features, Mapping):
            missing = [n for n in names if n not in features]
            if missing:
                raise ValueError(f"`features` lacks {missing}; this adapter reads {list(names)}.")
            maps = [features[n] for n in names]
        else:
            maps = list(features)
        if any(m.ndim != 4 for m in maps):
            raise ValueError(f"`features` must be (B, C, h, w) maps; got shapes {[tuple(m.shape) for m in maps]}.")
        found = [m.shape[1] for m in maps]
        if found != list(self.config.in_channels):
            raise ValueError(
                f"`features` have channels {found}, but this adapter expects {list(self.config.in_channels)} "
                f"(from {list(names)})."
            )
        batch, device = maps[0].shape[0], maps[0].device
        h, w = self._grid(maps)
        dtype = compute_dtype(device, self.dtype)  # the tokens' dtype: the adapter's, or autocast's
        pos = sine_position_embedding(self.config.hidden_size, h, w, device=device)  # (h*w, D) float32
        timestep = torch.as_tensor(timestep, device=device).reshape(-1).expand(batch)
        temb = self.time_embedding(self.time_proj(timestep).to(dtype))  # (B, D)
        # 1x1 conv of each map, resized to (h, w), summed, + pos + temb: a Triton kernel on CUDA (discadapt.kernels)
        weights, biases = [p.weight for p in self.proj], [p.bias for p in self.proj]
        tokens = adapter_intake(maps, weights, biases, pos, temb, (h, w), dtype=self.dtype)  # (B, h*w, D)
        if self.config.read_text:
            if text_tokens is None or text_tokens.shape[0] != batch:
                found = "none" if text_tokens is None else f"shape {tuple(text_tokens.shape)}"
                raise ValueError(
                    f"This adapter reads the prompt (read_text=True): pass `text_tokens` of shape (B={batch}, L, "
                    f"{self.config.token_dim}), the prompts' encoder_hidden_states (got {found})."
                )
            words = self.text_proj(text_tokens.to(tokens.dtype)) + self.text_type.to(tokens.dtype)
            tokens = torch.cat([tokens, words], dim=1)  # (B, h*w + L, D)
        memory = self.encoder(tokens)  # (B, h*w [+ L], D)
        queries = self.decoder(self.queries.expand(batch, -1, -1).to(memory.dtype), memory)  # (B, Q, D)
        itm, rec = queries.split([self.config.num_itm_queries, self.config.num_rec_queries], dim=1)
        token_embeds = None
        if text_tokens is not None:
            token_embeds = F.normalize(self.align_token(text_tokens.to(self.dtype)), dim=-1)
        return AdapterOutput(
            itm_embeds=F.normalize(self.itm_head(itm), dim=-1),
            boxes=self.box_head(rec).sigmoid(),
            rec_logits=self.class_head(rec),
            rec_embeds=F.normalize(self.align_query(rec), dim=-1),
            token_embeds=token_embeds,
        )

    def text_target(self, text: TextEmbeddings) -> torch.Tensor:
        """The ITM text embeddings `(B, text_dim)` of encoded prompts, as `config.itm_text` says: the pooled
        embedding, or the mean of the token embeddings where `text.mask` is 1."""
        if self.config.itm_text == "pooled":
            return text.pooled
        mask = text.mask.to(text.encoder_hidden_states.dtype)[..., None]  # (B, L, 1)
        return (text.encoder_hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)

    def itm_logits(self, output: AdapterOutput, text_embeds: torch.Tensor, pairwise: bool = True) -> torch.Tensor:
        """ITM logits in float32 (float64 for a float64 model): `exp(logit_scale) * max_q cos(itm_embeds[:, q], text)`.

        Args:
            output (`AdapterOutput`): adapter outputs for B (image, text) pairs.
            text_embeds (`torch.Tensor` of shape `(B, P)` or `(T, P)`): prompt embeddings (`text_target`).
            pairwise (`bool`, defaults to True): score pair b with text b, giving `(B,)`; else every
                output against every text, giving `(B, T)`.
        """
        # the queries are unit vectors already; a Triton kernel on CUDA (discadapt.kernels)
        return itm_logits(output.itm_embeds, text_embeds, self.logit_scale, pairwise=pairwise, normalize_queries=False)
