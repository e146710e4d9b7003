"""The world CLIP's training loss: CLIP's symmetric in-batch InfoNCE plus a hard-negative term, leaving out the
in-batch captions that may be true of an image (`valid_pairs`).

Example:
    >>> image, text, neg = torch.randn(3, 8), torch.randn(3, 8), torch.randn(2, 8)
    >>> sorted(world_clip_loss(image, text, neg, torch.tensor([0, 2]), torch.tensor(10.0)))
    ['contrastive', 'hard', 'loss']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..semantics import SAFETY_MARGIN, evaluate
from .config import HARD_NEGATIVE_WEIGHT

__all__ = ["valid_pairs", "world_clip_loss"]


def valid_pairs(examples) -> torch.Tensor:
    """bool `(B, B)`: entry (i, j) True when caption j is false of scene i even with relaxed geometry."""
    return torch.tensor(
        [[not evaluate(a.scene.objects, b.caption, margin=-SAFETY_MARGIN).ok for b in examples] for a in examples]
    )


def world_clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    negative_owner: torch.Tensor,
    logit_scale: torch.Tensor,
    valid: torch.Tensor | None = None,
    hard_negative_weight: float = HARD_NEGATIVE_WEIGHT,
) -> dict[str, torch.Tensor]:
    """CLIP's symmetric in-batch InfoNCE plus a hard-negative term (embeddings are normalised here).

    With s_ij = `logit_scale` * cos(image i, caption j) and h_ik = `logit_scale` * cos(image i, negative k):

    - contrastive = (CE_i over j of s_ij, target i  +  CE_j over i of s_ij, target j) / 2, averaged over the batch;
    - hard = CE over [s_ii, h_ik for the negatives k of image i, s_ij for j != i], target s_ii, averaged over images;
    - loss = contrastive + `hard_negative_weight` * hard.

    Pairs (i, j), i != j, with `valid[i, j]` False (caption j may be true of image i) are left out of both terms.

    Args:
        image_embeds (torch.Tensor): `(B, P)` image embeddings.
        text_embeds (torch.Tensor): `(B, P)` embeddings of the true captions, row i of image i.
        negative_embeds (torch.Tensor): `(M, P)` embeddings of hard negatives (M may be 0).
        negative_owner (torch.Tensor): long `(M,)`, the image (0..B-1) each negative belongs to.
        logit_scale (torch.Tensor): scalar multiplier of the cosines (the exponentiated learned scale).
        valid (torch.Tensor | None): bool `(B, B)`; None keeps all pairs. The diagonal is ignored. Default None.
        hard_negative_weight (float): weight of the hard term. Default 1.0.

    Returns:
        dict[str, torch.Tensor]: scalars `loss`, `contrastive`, `hard`.

    Example:
        >>> image, text, neg = torch.randn(3, 8), torch.randn(3, 8), torch.randn(2, 8)
        >>> out = world_clip_loss(image, text, neg, torch.tensor([0, 2]), torch.tensor(10.0))
        >>> sorted(out)
        ['contrastive', 'hard', 'loss']
    """
    b = len(image_embeds)
    if text_embeds.shape != image_embeds.shape or image_embeds.ndim != 2 or b < 2:
        raise ValueError(
            f"`image_embeds` {tuple(image_embeds.shape)} and `text_embeds` {tuple(text_embeds.shape)}; pass two "
            "(B, P) tensors, B >= 2."
        )
    if negative_embeds.ndim != 2 or negative_embeds.shape[1] != image_embeds.shape[1]:
        raise ValueError(
            f"`negative_embeds` has shape {tuple(negative_embeds.shape)}; pass (M, {image_embeds.shape[1]})."
        )
    if negative_owner.shape != (len(negative_embeds),) or (
        len(negative_owner) and not (0 <= int(negative_owner.min()) and int(negative_owner.max()) < b)
    ):
        raise ValueError(
            f"`negative_owner` is {negative_owner.tolist()}; pass one image index in 0..{b - 1} per negative."
        )
    device = image_embeds.device
    if valid is None:
        keep = torch.ones(b, b, dtype=torch.bool, device=device)
    elif valid.shape != (b, b):
        raise ValueError(f"`valid` has shape {tuple(valid.shape)}; pass a bool ({b}, {b}) mask or None.")
    else:
        keep = valid.to(device=device, dtype=torch.bool) | torch.eye(b, dtype=torch.bool, device=device)  # (B, B)
    image = F.normalize(image_embeds, dim=-1)  # (B, P)
    texts = F.normalize(torch.cat([text_embeds, negative_embeds]), dim=-1)  # (B + M, P)
    logits = logit_scale * image @ texts.T  # (B, B + M)
    target = torch.arange(b, device=device)
    pairs = logits[:, :b].masked_fill(~keep, float("-inf"))  # (B, B)
    contrastive = (F.cross_entropy(pairs, target) + F.cross_entropy(pairs.T, target)) / 2
    own = negative_owner.to(device)[None, :] == target[:, None]  # (B, M)
    hard = F.cross_entropy(logits.masked_fill(~torch.cat([keep, own], dim=1), float("-inf")), target)
    return {"loss": contrastive + hard_negative_weight * hard, "contrastive": contrastive, "hard": hard}
