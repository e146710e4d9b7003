"""Image-text matching (ITM) contrastive losses of DPT, and the matching accuracies used to evaluate them.

A score s(x, y) is the adapter's ITM logit for image x with the UNet conditioned on text y
(`adapter.itm_logits`, already multiplied by its learned scale exp(logit_scale), so no temperature is applied here).
Each sample b has one positive pair (x_b, y_b) and k negatives, gathered into score tables with the positive in
column 0:

    text_scores  (B, 1 + k_t)   [s(x_b, y_b), s(x_b, y'_1), ..., s(x_b, y'_k)]   hard-negative (or random) captions
    image_scores (B, 1 + k_i)   [s(x_b, y_b), s(x'_1, y_b), ..., s(x'_k, y_b)]   hard-negative (or random) images
    batch_scores (B, B)         s(x_i, y_j) for every image i and text j of the batch; positives on the diagonal

    L_text  = 1/B sum_b -log softmax(text_scores[b])[0]
    L_image = 1/B sum_b -log softmax(image_scores[b])[0]
    L_batch = 1/2 (1/B sum_i -log softmax_j(S[i, :])[i]  +  1/B sum_j -log softmax_i(S[:, j])[j])   (CLIP-style)
    L       = sum_s w_s L_s / sum_s w_s       over the tables given

Samples with fewer negatives pad their rows with -inf (a padded column adds nothing). In-batch negatives cost
B^2 UNet passes for DPT, since the image side is conditioned on the text. Losses are computed in float32 (float64
for float64 scores) with autocast disabled, and returned in that dtype.

Example:
    >>> pos = adapter.itm_logits(out_pos, text_pos)                     # (B,)
    >>> neg = adapter.itm_logits(out_neg_caption, text_neg)             # (B,): same image, hard-negative caption
    >>> losses = itm_loss(text_scores=torch.stack([pos, neg], dim=1))
    >>> losses["loss"].backward()
    >>> multiple_choice_accuracy(torch.stack([pos, neg], dim=1)).float().mean()
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._precision import full_precision, upcast

__all__ = ["itm_loss", "multiple_choice_loss", "in_batch_loss", "multiple_choice_accuracy", "in_batch_accuracy"]


def _check_table(scores: torch.Tensor, name: str) -> None:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or scores.shape[1] < 2 or scores.shape[0] < 1:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"`{name}` is {shape}; pass a (B, 1 + k) tensor of scores with the positive in column 0 and k >= 1 "
            "negatives."
        )
    if not scores.is_floating_point():
        raise ValueError(f"`{name}` has dtype {scores.dtype}; pass floating-point scores.")
    bad = ~torch.isfinite(scores[:, 0])
    if bad.any():
        raise ValueError(
            f"`{name}[:, 0]` (the positives) is not finite in rows {bad.nonzero().flatten().tolist()}; only "
            "negatives may be padded with -inf."
        )


def _check_square(scores: torch.Tensor, name: str) -> None:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"`{name}` is {shape}; pass a square (B, B) matrix of s(image i, text j) with positives on the diagonal."
        )
    if scores.shape[0] < 2:
        raise ValueError(f"`{name}` is {tuple(scores.shape)}; in-batch negatives need a batch of at least 2.")
    if not scores.is_floating_point():
        raise ValueError(f"`{name}` has dtype {scores.dtype}; pass floating-point scores.")
    bad = ~torch.isfinite(scores.diagonal())
    if bad.any():
        raise ValueError(f"`{name}` has non-finite positives (diagonal) at {bad.nonzero().flatten().tolist()}.")


def multiple_choice_loss(scores: torch.Tensor) -> torch.Tensor:
    """Cross-entropy towards column 0, averaged over samples.

    Args:
        scores (`torch.Tensor` of shape `(B, 1 + k)`): positive score in column 0, k >= 1 negatives (-inf pads).

    Returns:
        `torch.Tensor`, scalar, float32 (float64 for float64 scores).
    """
    return _multiple_choice_loss(scores, "scores")


def _multiple_choice_loss(scores: torch.Tensor, name: str) -> torch.Tensor:
    _check_table(scores, name)
    with full_precision(scores.device):
        scores = upcast(scores)
        return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device))


def in_batch_loss(scores: torch.Tensor) -> torch.Tensor:
    """Symmetric in-batch contrastive loss (CLIP): rows (image -> texts) and columns (text -> images), averaged.

    Args:
        scores (`torch.Tensor` of shape `(B, B)`): `scores[i, j] = s(image i, text j)`, positives on the diagonal.

    Returns:
        `torch.Tensor`, scalar, float32 (float64 for float64 scores).
    """
    return _in_batch_loss(scores, "scores")


def _in_batch_loss(scores: torch.Tensor, name: str) -> torch.Tensor:
    _check_square(scores, name)
    with full_precision(scores.device):
        scores = upcast(scores)
        labels = torch.arange(scores.shape[0], device=scores.device)  # (B,)
        return (F.cross_entropy(scores, labels) + F.cross_entropy(scores.T, labels)) / 2


def itm_loss(
    text_scores: torch.Tensor | None = None,
    image_scores: torch.Tensor | None = None,
    batch_scores: torch.Tensor | None = None,
    *,
    text_weight: float = 1.0,
    image_weight: float = 1.0,
    batch_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """DPT's ITM loss: weighted mean of the contrastive losses of the score tables given (at least one).

    Args:
        text_scores (`torch.Tensor` of shape `(B, 1 + k_t)`, *optional*): s(x_b, y_b) in column 0, then the
            same image with negative captions.
        image_scores (`torch.Tensor` of shape `(B, 1 + k_i)`, *optional*): s(x_b, y_b) in column 0, then
            negative images with the same caption.
        batch_scores (`torch.Tensor` of shape `(B, B)`, *optional*): in-batch scores s(x_i, y_j), positives on
            the diagonal.
        text_weight (`float`, defaults to 1.0): weight of `L_text`.
        image_weight (`float`, defaults to 1.0): weight of `L_image`.
        batch_weight (`float`, defaults to 1.0): weight of `L_batch`.

    Returns:
        `dict[str, torch.Tensor]`: float32 scalars `loss_text`, `loss_image`, `loss_batch` (those given) and
        `loss = sum_s w_s L_s / sum_s w_s`.
    """
    tables = {
        "text": (text_scores, text_weight, _multiple_choice_loss),
        "image": (image_scores, image_weight, _multiple_choice_loss),
        "batch": (batch_scores, batch_weight, _in_batch_loss),
    }
    for side, (_, weight, _) in tables.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"`{side}_weight` is {weight!r}; pass a finite weight >= 0 (0 turns that term off).")
    given = {side: entry for side, entry in tables.items() if entry[0] is not None}
    if not given:
        raise ValueError("No scores given; pass at least one of `text_scores`, `image_scores`, `batch_scores`.")
    if sum(weight for _, weight, _ in given.values()) == 0:
        raise ValueError(f"The weights of the scores given ({[f'{s}_weight' for s in given]}) are all 0; set one > 0.")
    losses = {f"loss_{side}": fn(scores, f"{side}_scores") for side, (scores, _, fn) in given.items()}  # checks
    sizes = {f"{side}_scores": scores.shape[0] for side, (scores, _, _) in given.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"The score tables have different batch sizes {sizes}; pass one row per sample in each.")
    total_weight = sum(weight for _, weight, _ in given.values())
    losses["loss"] = sum(weight * losses[f"loss_{side}"] for side, (_, weight, _) in given.items()) / total_weight
    return losses


def multiple_choice_accuracy(scores: torch.Tensor) -> torch.Tensor:
    """Whether the positive (column 0) scores strictly higher than every negative; a tie counts as a miss.

    Args:
        scores (`torch.Tensor` of shape `(B, 1 + k)`): positive in column 0, k >= 1 negatives (-inf pads).

    Returns:
        `torch.Tensor` of shape `(B,)`, bool; `.float().mean()` is the accuracy.
    """
    _check_table(scores, "scores")
    scores = upcast(scores.detach())
    return scores[:, 0] > scores[:, 1:].amax(dim=1)


def in_batch_accuracy(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Retrieval accuracy in a batch: the diagonal strictly highest in its row and in its column.

    Args:
        scores (`torch.Tensor` of shape `(B, B)`): `scores[i, j] = s(image i, text j)`, positives on the diagonal.

    Returns:
        `(image_to_text, text_to_image)`: two bool tensors of shape `(B,)`; `image_to_text[i]` is whether text i
        is image i's best text, `text_to_image[j]` whether image j is text j's best image.
    """
    _check_square(scores, "scores")
    scores = upcast(scores.detach())
    diag = scores.diagonal()  # (B,)
    off = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    others = scores.masked_fill(off, float("-inf"))  # (B, B), diagonal removed
    return diag > others.amax(dim=1), diag > others.amax(dim=0)
