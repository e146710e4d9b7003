"""The UNet's cross-attention maps, recorded while it runs: where each text token is attended to.

`CrossAttentionMaps(unet)` is a context manager that puts an observer in front of the processor of every
cross-attention layer (`Attention.is_cross_attention`, the transformer blocks' `attn2`). The observer computes the
layer's attention probabilities softmax(q k^T / sqrt(d)) from the layer's own `to_q` / `to_k` (LoRA layers
included, so the maps carry their gradient), averages them over heads, keeps them, and then hands the call to the
original processor, which computes the output as before (SDPA or whatever was set): the UNet's output is unchanged.
The processors are put back on exit. Text-to-image models localise each word this way (prompt-to-prompt reads the
maps, TokenCompose supervises them with object masks); here stage 2 supervises them with boxes
(`losses.attention_grounding_loss`, `TuneConfig.grounding_weight`).

Example:
    >>> with CrossAttentionMaps(pipe.unet) as maps:
    ...     pred = pipe.unet(x_t, t, encoder_hidden_states=text).sample
    >>> maps[0].shape  # (batch, query positions h*w of that layer, text tokens)
    torch.Size([2, 16, 77])
"""

from __future__ import annotations

from torch import nn

__all__ = ["CrossAttentionMaps"]


class _Observer:
    """A processor that records the head-averaged attention probabilities, then calls the one it wraps."""

    def __init__(self, processor, maps: list):
        self.processor, self.maps = processor, maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError(
                f"a cross-attention layer got hidden states of shape {tuple(hidden_states.shape)} or a spatial / group "
                "norm; CrossAttentionMaps reads the transformer blocks' (batch, positions, channels) layers only."
            )
        text = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(text))
        mask = attn.prepare_attention_mask(attention_mask, text.shape[1], len(hidden_states))
        probs = attn.get_attention_scores(query, key, mask)  # (batch * heads, positions, tokens)
        self.maps.append(probs.unflatten(0, (len(hidden_states), attn.heads)).mean(dim=1))
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


class CrossAttentionMaps(list):
    """The maps of every cross-attention layer of `unet`, in call order, recorded inside the `with` block: a list of
    `(batch, h * w, tokens)` tensors, head-averaged, each row summing to 1 over the tokens (see the module docstring).

    Args:
        unet (`nn.Module`): a diffusers UNet (any module holding diffusers `Attention` layers).

    Raises:
        ValueError: the UNet has no cross-attention layer.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.layers = [m for m in unet.modules() if getattr(m, "is_cross_attention", False) and hasattr(m, "processor")]
        if not self.layers:
            raise ValueError(f"The {type(unet).__name__} has no cross-attention layer whose maps could be recorded.")
        self._originals = []

    def __enter__(self) -> CrossAttentionMaps:
        self.clear()
        self._originals = [layer.processor for layer in self.layers]
        for layer, processor in zip(self.layers, self._originals):
            layer.processor = _Observer(processor, self)
        return self

    def __exit__(self, *exc) -> None:
        for layer, processor in zip(self.layers, self._originals):
            layer.processor = processor
        self._originals = []

    @staticmethod
    def grid(positions: int, height: int, width: int) -> tuple[int, int]:
        """The `(h, w)` of a layer's `positions` query positions for a latent of `height` x `width` (the UNet halves
        both sides together)."""
        for stride in (2**k for k in range(8)):
            if height % stride == 0 and width % stride == 0 and (height // stride) * (width // stride) == positions:
                return height // stride, width // stride
        raise ValueError(f"{positions} query positions are no power-of-two reduction of a {height}x{width} latent.")
