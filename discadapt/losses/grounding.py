"""Grounding loss of the UNet's cross-attention: each phrase's words should attend inside the boxes of its objects.

TokenCompose's token loss (Wang et al., CVPR 2024) with boxes for masks. For a layer's head-averaged attention map
A (positions x tokens, `cross_attention.CrossAttentionMaps`) and a phrase with token set P and boxes B,

    a(x)  = sum_{k in P} A(x, k)                 the phrase's attention at position x
    share = sum_x a(x) M_B(x) / sum_x a(x)       M_B: the union of the boxes' soft masks (`boxes.box_mask`)
    L     = mean over layers and phrases of (1 - share)^2

so the loss falls as every phrase's attention moves into its objects, at every resolution the UNet attends at.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..boxes import box_mask
from ._precision import full_precision, upcast
from .box_ops import box_cxcywh_to_xyxy

__all__ = ["attention_grounding_loss", "attention_shares", "uniform_shares"]


def _phrase_masks(boxes: torch.Tensor, tokens: torch.Tensor, height: int, width: int):
    """`(token sets (p, L), masks (p, h, w))`: the boxes grouped by their token set (a counting caption's objects
    share one phrase), each group's masks united by their maximum."""
    groups: dict[tuple, list] = {}
    for box, words in zip(box_cxcywh_to_xyxy(boxes.float()).clamp(0, 1).tolist(), tokens):
        groups.setdefault(tuple(words.tolist()), []).append(box_mask(box, height, width))
    token_sets = torch.tensor(list(groups), dtype=torch.bool, device=boxes.device)
    masks = torch.stack([torch.stack(m).amax(dim=0) for m in groups.values()]).to(boxes.device)
    return token_sets, masks


def attention_shares(
    maps: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]], boxes: Sequence[torch.Tensor], tokens: Sequence
) -> torch.Tensor:
    """The share of each phrase's attention inside its boxes, per layer.

    Args:
        maps (Sequence[torch.Tensor]): per layer, `(R, h * w, L)` attention probabilities of R (image, caption) rows.
        grids (Sequence[tuple[int, int]]): per layer, its `(h, w)`.
        boxes (Sequence[torch.Tensor]): per row, `(n, 4)` boxes, cxcywh in [0, 1].
        tokens (Sequence[torch.Tensor]): per row, `(n, L)` bool, the caption's tokens naming each box.

    Returns:
        `torch.Tensor` of shape `(layers, phrases)`: the shares, phrases of all rows in order.
    """
    if not len(maps) or len(maps) != len(grids):
        raise ValueError(f"pass one (h, w) per attention map; got {len(maps)} maps and {len(grids)} grids.")
    if any(len(m) != len(boxes) for m in maps) or len(tokens) != len(boxes):
        raise ValueError(f"`maps`, `boxes` and `tokens` must hold one entry per row ({len(boxes)} boxes).")
    shares, planned = [], {}  # (h, w) -> per row (token sets, masks): layers share a few resolutions
    with full_precision(maps[0].device):
        for attention, grid in zip(maps, map(tuple, grids)):
            if grid not in planned:
                planned[grid] = [_phrase_masks(b, k, *grid) for b, k in zip(boxes, tokens)]
            attention, layer = upcast(attention), []
            for row, (token_sets, masks) in enumerate(planned[grid]):
                a = attention[row] @ token_sets.T.to(attention)  # (h * w, p)
                inside = (a * masks.flatten(1).T.to(attention)).sum(dim=0)
                layer.append(inside / a.sum(dim=0).clamp_min(1e-12))
            shares.append(torch.cat(layer))
    return torch.stack(shares)


def uniform_shares(grids: Sequence[tuple[int, int]], boxes: Sequence[torch.Tensor], tokens: Sequence) -> torch.Tensor:
    """`(layers, phrases)`: the shares a uniform attention map would give, each phrase's boxes' area on each layer's
    grid (the floor `attention_shares` is read against); arguments as `attention_shares`."""
    return torch.stack(
        [
            torch.cat([_phrase_masks(b, k, h, w)[1].flatten(1).mean(dim=1) for b, k in zip(boxes, tokens)])
            for h, w in grids
        ]
    )


def attention_grounding_loss(
    maps: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]], boxes: Sequence[torch.Tensor], tokens: Sequence
) -> torch.Tensor:
    """`mean (1 - share)^2` over layers and phrases (module docstring); arguments as `attention_shares`."""
    return (1 - attention_shares(maps, grids, boxes, tokens)).pow(2).mean()
