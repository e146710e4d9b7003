"""Features from named blocks of a diffusers UNet, taken with forward hooks.

A `FeatureProbe` hooks the UNet's own modules (`down_blocks.i`, `mid_block`, `up_blocks.i`, or any finer
module path whose output is a feature map, such as `up_blocks.1.attentions.0`), so it works on every
`UNet2DConditionModel` (SD 1.x, SD 2.x, SDXL) and every diffusers version that keeps those module names; the
UNet's `forward` is never copied. With `early_exit=True` the forward pass is stopped right after the last
probed block, so the high-resolution up blocks, usually most of the cost, are skipped.

Example:
    >>> from discadapt import FeatureProbe
    >>> probe = FeatureProbe(pipe.unet, ["mid_block", "up_blocks.1"])
    >>> probe.describe(64, 64)["up_blocks.1"]
    FeatureInfo(channels=1280, height=32, width=32, stride=2)
    >>> feats = probe(latents, t, encoder_hidden_states=prompt_embeds)  # {"mid_block": ..., "up_blocks.1": ...}

Used passively (the caller runs the UNet, as a sampler does), the probe records `probe.features`:
    >>> with FeatureProbe(pipe.unet, ["up_blocks.1"], early_exit=False, detach=False) as probe:
    ...     noise_pred = pipe.unet(latents, t, encoder_hidden_states=prompt_embeds).sample
    ...     feats = probe.features
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureProbe", "FeatureInfo", "block_names"]


class _EarlyExit(Exception):
    """Raised from a hook once every probed block has run; caught by `FeatureProbe.__call__`."""


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """Shape of a probed feature map: `channels` x `height` x `width`, `stride` latent pixels per feature."""

    channels: int
    height: int
    width: int
    stride: int


def block_names(unet: nn.Module) -> list[str]:
    """Names of the UNet's top-level blocks in execution order: `down_blocks.i`, `mid_block`, `up_blocks.i`."""
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


def _first_tensor(output) -> torch.Tensor:
    """The hidden states in a block's output: down blocks return `(hidden_states, residuals)`, transformer
    modules an output object with `.sample`, the other blocks a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    return output[0]


def _dummy_unet_inputs(unet: nn.Module, height: int, width: int) -> dict:
    """Smallest valid inputs of a `UNet2DConditionModel` (zeros) for a shape-finding dry run."""
    config = unet.config
    param = next(unet.parameters())
    kwargs = dict(
        sample=torch.zeros(1, config.in_channels, height, width, dtype=param.dtype, device=param.device),
        timestep=torch.zeros(1, dtype=torch.long, device=param.device),
        encoder_hidden_states=torch.zeros(
            1, 1, config.encoder_hid_dim or config.cross_attention_dim, dtype=param.dtype, device=param.device
        ),
    )
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(1, text_dim, dtype=param.dtype, device=param.device),
            "time_ids": torch.zeros(1, 6, dtype=param.dtype, device=param.device),
        }
    elif config.addition_embed_type is not None:
        raise ValueError(
            f"describe() cannot build inputs for addition_embed_type={config.addition_embed_type!r}; "
            "pass example inputs: probe.describe(height, width, added_cond_kwargs=...)."
        )
    if config.class_embed_type is not None or config.num_class_embeds is not None:
        kwargs["class_labels"] = torch.zeros(1, dtype=torch.long, device=param.device)
    return kwargs


class FeatureProbe:
    """Collects the outputs of named UNet modules with forward hooks.

    Args:
        unet (`UNet2DConditionModel`): the UNet to probe (any diffusers UNet with `down_blocks`,
            `mid_block`, `up_blocks`).
        layers (`str` or `Sequence[str]`): module paths to probe, e.g. `"mid_block"`, `"up_blocks.1"` or
            `"up_blocks.1.attentions.0"`.
        detach (`bool`, defaults to `True`): detach the features from the autograd graph. Set `False` to
            backpropagate through the probed part of the UNet (self-correction, tuning).
        early_exit (`bool`, defaults to `True`): when called, stop the UNet forward as soon as every probed
            module has produced its output; the features are identical, the later blocks never run.

    The hooks are attached by `attach()` or by entering the probe as a context manager, and removed by
    `remove()` or on exit. Calling the probe attaches them for the duration of the call if needed.
    """

    def __init__(self, unet: nn.Module, layers: str | Sequence[str], *, detach: bool = True, early_exit: bool = True):
        if not all(hasattr(unet, name) for name in ("down_blocks", "up_blocks", "config")):
            raise ValueError(
                f"`unet` is a {type(unet).__name__}, not a diffusers UNet with down_blocks/mid_block/up_blocks "
                "(e.g. UNet2DConditionModel); pass `pipe.unet`."
            )
        layers = [layers] if isinstance(layers, str) else list(layers)
        if not layers:
            raise ValueError("`layers` is empty; name at least one block, e.g. ['up_blocks.1'].")
        if len(set(layers)) != len(layers):
            raise ValueError(f"`layers` lists a block twice: {layers}.")
        modules = dict(unet.named_modules())
        for name in layers:
            if name not in modules or name == "":
                blocks = block_names(unet)
                raise ValueError(
                    f"`layers` names {name!r} but this UNet has no such module. Its blocks are: "
                    f"{', '.join(blocks)} (finer paths inside them work too, e.g. '{blocks[-1]}.resnets.0')."
                )
        self.unet = unet
        self.layers = layers
        self.detach = detach
        self.early_exit = early_exit
        self._modules = [modules[name] for name in layers]
        self._handles: list = []
        self._features: dict[str, torch.Tensor] = {}
        self._exit_armed = False
        self._info: dict[str, tuple[int, int]] | None = None  # name -> (channels, stride), from a dry run

    # hooks ------------------------------------------------------------------------------------------------
    def attach(self) -> FeatureProbe:
        """Register the forward hooks (idempotent)."""
        if not self._handles:
            self._handles = [
                module.register_forward_hook(self._make_hook(name)) for name, module in zip(self.layers, self._modules)
            ]
        return self

    def remove(self) -> None:
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> FeatureProbe:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    def _make_hook(self, name: str):
        def hook(module, args, output):
            feature = _first_tensor(output)
            self._features[name] = feature.detach() if self.detach else feature
            if self._exit_armed and len(self._features) == len(self.layers):
                raise _EarlyExit

        return hook

    @property
    def features(self) -> dict[str, torch.Tensor]:
        """Features recorded by the last UNet forward, `{layer: (B, C, h, w)}` in the order of `layers`."""
        return {name: self._features[name] for name in self.layers if name in self._features}

    def clear(self) -> None:
        self._features = {}

    # running ------------------------------------------------------------------------------------------------
    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, **unet_kwargs):
        """Run the UNet on these inputs (see `UNet2DConditionModel.forward`) and return the features.

        Returns:
            `dict[str, torch.Tensor]`: `{layer: (B, C, h, w)}`, in the order of `layers`.
        """
        attached_here = not self.attached
        self.attach()
        self.clear()
        self._exit_armed = self.early_exit
        try:
            self.unet(sample, timestep, encoder_hidden_states, return_dict=False, **unet_kwargs)
        except _EarlyExit:
            pass
        finally:
            self._exit_armed = False
            if attached_here:
                self.remove()
        missing = [name for name in self.layers if name not in self._features]
        if missing:
            raise RuntimeError(f"The UNet forward did not run the probed modules {missing}.")
        return self.features

    def describe(self, height: int | None = None, width: int | None = None, **unet_kwargs) -> dict[str, FeatureInfo]:
        """Channels and spatial size of each probed feature for latents of `height` x `width`.

        Read from the model by one early-exit dry run at a small latent size (2x2 at the deepest block), so it
        holds for any architecture and any module path.

        Args:
            height (`int`, *optional*): latent height; defaults to `unet.config.sample_size`.
            width (`int`, *optional*): latent width; defaults to `height` (to the config's when neither is given).
            **unet_kwargs: example UNet inputs for UNets whose extra conditioning cannot be guessed.
        """
        sample_size = self.unet.config.sample_size
        default_h, default_w = sample_size if isinstance(sample_size, (tuple, list)) else (sample_size, sample_size)
        if height is None:
            height, width = default_h, width or default_w
        width = width or height
        if self._info is None:
            # 2x2 at the deepest level: a 1x1 map fails in GroupNorm when a group holds one channel
            size = 2 ** (getattr(self.unet, "num_upsamplers", len(self.unet.down_blocks) - 1) + 1)
            inputs = {**_dummy_unet_inputs(self.unet, size, size), **unet_kwargs}
            probe = FeatureProbe(self.unet, self.layers, detach=True, early_exit=True)
            with torch.no_grad():
                feats = probe(**inputs)
            not_maps = {name: tuple(f.shape) for name, f in feats.items() if f.ndim != 4}
            if not_maps:
                raise ValueError(
                    f"`layers` names modules whose output is not a (B, C, h, w) feature map: {not_maps} (for a "
                    "size-1 latent batch); probe a block or a module that outputs a map, e.g. 'up_blocks.1' or "
                    "'up_blocks.1.attentions.0'."
                )
            self._info = {name: (f.shape[1], size // f.shape[-1]) for name, f in feats.items()}
        return {
            name: FeatureInfo(channels, -(-height // stride), -(-width // stride), stride)
            for name, (channels, stride) in self._info.items()
        }

    def __repr__(self) -> str:
        return f"FeatureProbe(layers={self.layers}, detach={self.detach}, early_exit={self.early_exit})"
