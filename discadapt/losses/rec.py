"""Referring-expression comprehension (REC) loss of the DPT adapter: DETR set loss plus MDETR token alignment.

Each of the B samples has Q box queries and n_b <= Q target boxes, each with the prompt tokens of its phrase.
The Hungarian matcher (`matcher.py`) gives each target box j one query σ(j); the other queries are "no object".
With N = sum_b n_b the number of target boxes (at least 1),

    L_ce    = sum_i w_i * -log softmax(logits_i)[c_i] / sum_i w_i       over all B*Q queries,
              c_i = 0 ("referred object", w_i = 1) if matched, else 1 ("no object", w_i = no_object_weight)
    L_l1    = 1/N sum_j || box_σ(j) - box_j ||_1                        on (cx, cy, w, h)
    L_giou  = 1/N sum_j (1 - GIoU(box_σ(j), box_j))                     on the corner form
    L_align = 1/N * (sum_i l_i + sum_t l_t) / 2                         (MDETR's contrastive alignment)

where s_it = <rec_embed_i, token_embed_t> / temperature, P the positive map (P_it true when query i is matched to a
box whose phrase contains token t),

    l_i = -1/|P_i.| sum_{t in P_i.} s_it + log sum_{t valid} exp(s_it)   for each matched query i   (query -> tokens)
    l_t = -1/|P_.t| sum_{i in P_.t} s_it + log sum_i exp(s_it)           for each token t in P      (token -> queries)

and  L = ce_weight * L_ce + l1_weight * L_l1 + giou_weight * L_giou + align_weight * L_align.
DPT's weights are the defaults: 1, 5, 2, 1, with no-object weight 0.1 (DETR's `eos_coef`) and temperature 0.07
(MDETR's). Losses are computed in float32 (float64 for float64 inputs) with autocast disabled.

Targets: one dict per sample,
    `boxes`  (`torch.Tensor` of shape `(n_b, 4)`): (cx, cy, w, h), in the units of the predictions ([0, 1] for
             the adapter);
    `tokens` (`torch.Tensor` of shape `(n_b, L)`, bool): the prompt tokens of each box's phrase (at least one
             per box), L the length of the token embeddings; needed only when `align_weight > 0`.

Example:
    >>> criterion = RECLoss()
    >>> out = adapter(features, t, text_tokens=encoder_hidden_states)                  # AdapterOutput
    >>> tokens = torch.zeros(1, 77, dtype=torch.bool); tokens[0, 1:3] = True          # "red cube"
    >>> losses = criterion(out, [{"boxes": torch.tensor([[0.4, 0.5, 0.2, 0.2]]), "tokens": tokens}])
    >>> losses["loss"].backward()
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import full_precision, upcast
from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import HungarianMatcher, check_predictions, check_targets

__all__ = ["RECLossConfig", "RECLoss", "rec_loss"]

_LOSS_WEIGHTS = ("ce_weight", "l1_weight", "giou_weight", "align_weight")


@dataclass
class RECLossConfig:
    """Weights of the REC loss and of its matching cost (defaults: DPT / DETR / MDETR)."""

    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the [object, no object] cross-entropy."})
    l1_weight: float = field(default=5.0, metadata={"help": "Weight of the L1 loss on matched (cx, cy, w, h)."})
    giou_weight: float = field(default=2.0, metadata={"help": "Weight of the GIoU loss (1 - GIoU) on matched boxes."})
    align_weight: float = field(
        default=1.0, metadata={"help": "Weight of the query-token contrastive alignment loss; 0 turns it off."}
    )
    no_object_weight: float = field(
        default=0.1, metadata={"help": "Class weight of 'no object' in the cross-entropy (DETR's eos_coef); > 0."}
    )
    temperature: float = field(
        default=0.07, metadata={"help": "Temperature dividing query-token cosine similarities in the alignment."}
    )
    match_class_weight: float = field(default=1.0, metadata={"help": "Matching cost weight of -p(object)."})
    match_l1_weight: float = field(default=5.0, metadata={"help": "Matching cost weight of the L1 box distance."})
    match_giou_weight: float = field(default=2.0, metadata={"help": "Matching cost weight of -GIoU."})

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"`{name}` is {value!r}; pass a finite number.")
            if value < 0:
                raise ValueError(f"`{name}` is {value}; weights and temperatures must be >= 0 (use 0 to turn off).")
        if not any(getattr(self, name) for name in _LOSS_WEIGHTS):
            raise ValueError(f"All of {list(_LOSS_WEIGHTS)} are 0, so the loss is constant; set one > 0.")
        if self.no_object_weight == 0:
            raise ValueError(
                "`no_object_weight` is 0: a batch without targets would have no weighted query; pass a value > 0 "
                "(DETR uses 0.1)."
            )
        if self.temperature == 0:
            raise ValueError("`temperature` is 0, which divides by zero; pass a value > 0 (MDETR uses 0.07).")

    def matcher(self) -> HungarianMatcher:
        """The matcher with this config's cost weights."""
        return HungarianMatcher(self.match_class_weight, self.match_l1_weight, self.match_giou_weight)


def _positive_map(
    targets: Sequence[Mapping[str, torch.Tensor]],
    indices: Sequence[tuple[torch.Tensor, torch.Tensor]],
    shape: tuple[int, int, int],
    token_mask: torch.Tensor,
) -> torch.Tensor:
    """`(B, Q, L)` bool: query q of sample b is matched to a box whose phrase contains token t."""
    batch, _, length = shape
    positive = torch.zeros(shape, dtype=torch.bool, device=token_mask.device)
    for b, (target, (query_idx, target_idx)) in enumerate(zip(targets, indices)):
        tokens, n = target.get("tokens"), target["boxes"].shape[0]
        if tokens is None and n == 0:
            continue
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.bool or tokens.shape != (n, length):
            found = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else repr(tokens)
            raise ValueError(
                f"`targets[{b}]['tokens']` is {found}; the alignment loss needs a ({n}, {length}) bool mask of each "
                "box's phrase tokens (L from `token_embeds`), or set `align_weight=0`."
            )
        tokens = tokens.to(token_mask.device)
        if n and not tokens.any(dim=1).all():
            raise ValueError(
                f"`targets[{b}]['tokens']` has a box with no phrase token (rows "
                f"{(~tokens.any(dim=1)).nonzero().flatten().tolist()}); mark at least one token per box."
            )
        if (tokens & ~token_mask[b]).any():
            raise ValueError(
                f"`targets[{b}]['tokens']` marks tokens that `token_mask[{b}]` says are padding; a phrase's tokens "
                "must be valid tokens."
            )
        positive[b, query_idx.to(positive.device)] = tokens[target_idx.to(tokens.device)]
    return positive


def _alignment_loss(
    rec_embeds: torch.Tensor, token_embeds: torch.Tensor, positive: torch.Tensor, token_mask: torch.Tensor, tau: float
) -> torch.Tensor:
    """MDETR's contrastive alignment, summed over queries and tokens (not yet divided by 2 N)."""
    sim = torch.einsum("bqa,bla->bql", rec_embeds, token_embeds) / tau  # (B, Q, L)
    pos_sum = torch.where(positive, sim, torch.zeros_like(sim))  # (B, Q, L), s_it on positives only
    # query -> tokens: negatives are the valid tokens of the prompt
    pos_q = positive.sum(dim=2)  # (B, Q)
    lse_q = sim.masked_fill(~token_mask[:, None, :], float("-inf")).logsumexp(dim=2)  # (B, Q)
    loss_q = -pos_sum.sum(dim=2) / pos_q.clamp(min=1) + lse_q  # (B, Q)
    loss_q = torch.where(pos_q > 0, loss_q, torch.zeros_like(loss_q)).sum()
    # token -> queries: negatives are all queries of the sample
    pos_t = positive.sum(dim=1)  # (B, L)
    lse_t = sim.logsumexp(dim=1)  # (B, L)
    loss_t = -pos_sum.sum(dim=1) / pos_t.clamp(min=1) + lse_t  # (B, L)
    loss_t = torch.where(pos_t > 0, loss_t, torch.zeros_like(loss_t)).sum()
    return (loss_q + loss_t) / 2


def _check_alignment_inputs(
    rec_embeds, token_embeds, token_mask, batch: int, num_queries: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if rec_embeds is None or token_embeds is None:
        raise ValueError(
            "The alignment loss needs `rec_embeds` and `token_embeds`: run the adapter with `text_tokens=` "
            "(the prompt's encoder_hidden_states), or set `align_weight=0`."
        )
    if rec_embeds.ndim != 3 or rec_embeds.shape[:2] != (batch, num_queries):
        raise ValueError(
            f"`rec_embeds` is {tuple(rec_embeds.shape)}; pass ({batch}, {num_queries}, A), one embedding per query."
        )
    if token_embeds.ndim != 3 or token_embeds.shape[0] != batch or token_embeds.shape[2] != rec_embeds.shape[2]:
        raise ValueError(
            f"`token_embeds` is {tuple(token_embeds.shape)} and `rec_embeds` {tuple(rec_embeds.shape)}; pass "
            f"({batch}, L, {rec_embeds.shape[2]}) token embeddings in the same space as the queries'."
        )
    length = token_embeds.shape[1]
    if token_mask is None:
        token_mask = torch.ones(batch, length, dtype=torch.bool, device=token_embeds.device)
    elif token_mask.dtype != torch.bool or token_mask.shape != (batch, length):
        raise ValueError(
            f"`token_mask` is {tuple(token_mask.shape)} {token_mask.dtype}; pass a ({batch}, {length}) bool mask "
            "of valid (non-padding) tokens, e.g. the tokenizer's `attention_mask.bool()`."
        )
    elif not token_mask.any(dim=1).all():
        raise ValueError("`token_mask` has a sample with no valid token; each prompt has at least one token.")
    return rec_embeds, token_embeds, token_mask.to(token_embeds.device)


def rec_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: Sequence[Mapping[str, torch.Tensor]],
    rec_embeds: torch.Tensor | None = None,
    token_embeds: torch.Tensor | None = None,
    *,
    token_mask: torch.Tensor | None = None,
    config: RECLossConfig | None = None,
    indices: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    num_boxes: float | None = None,
) -> dict[str, torch.Tensor]:
    """The REC loss (see the module docstring for the formulas and the target format).

    Args:
        logits (`torch.Tensor` of shape `(B, Q, 2)`): logits of [referred object, no object].
        boxes (`torch.Tensor` of shape `(B, Q, 4)`): predicted boxes (cx, cy, w, h).
        targets (`Sequence[Mapping[str, torch.Tensor]]`): B dicts with `boxes` `(n_b, 4)` and, for the alignment,
            `tokens` `(n_b, L)` bool.
        rec_embeds (`torch.Tensor` of shape `(B, Q, A)`, *optional*): query embeddings, L2-normalised (as the
            adapter gives them); needed when `align_weight > 0`.
        token_embeds (`torch.Tensor` of shape `(B, L, A)`, *optional*): prompt token embeddings, L2-normalised;
            needed when `align_weight > 0`.
        token_mask (`torch.Tensor` of shape `(B, L)`, bool, *optional*): valid (non-padding) tokens, the only
            negatives of a query; defaults to all tokens.
        config (`RECLossConfig`, *optional*): weights; defaults to `RECLossConfig()` (DPT's).
        indices (`Sequence[tuple[torch.Tensor, torch.Tensor]]`, *optional*): a matching already computed by
            `config.matcher()` on these predictions; computed here when not given.
        num_boxes (`float`, *optional*): the normaliser N; defaults to the number of target boxes in `targets`
            (at least 1). Pass the mean over processes in distributed training.

    Returns:
        `dict[str, torch.Tensor]`: float32 scalars `loss_ce`, `loss_l1`, `loss_giou`, `loss_align` (0 when
        `align_weight` is 0) and their weighted sum `loss`.
    """
    config, indices, num_boxes = _check_matching(logits, boxes, targets, config, indices, num_boxes)
    batch, num_queries = logits.shape[:2]
    align = config.align_weight > 0
    if align:
        rec_embeds, token_embeds, token_mask = _check_alignment_inputs(
            rec_embeds, token_embeds, token_mask, batch, num_queries
        )
        positive = _positive_map(targets, indices, (batch, num_queries, token_embeds.shape[1]), token_mask)
    device = logits.device
    with full_precision(device):
        losses = _matched_losses(upcast(logits), upcast(boxes), targets, indices, config, num_boxes)
        if align:
            loss_align = (
                _alignment_loss(
                    upcast(rec_embeds),
                    upcast(token_embeds).to(device),
                    positive.to(device),
                    token_mask.to(device),
                    config.temperature,
                )
                / num_boxes
            )
        else:
            loss_align = torch.zeros((), dtype=losses["loss_ce"].dtype, device=device)
        losses["loss_align"] = loss_align
        losses["loss"] = (
            config.ce_weight * losses["loss_ce"]
            + config.l1_weight * losses["loss_l1"]
            + config.giou_weight * losses["loss_giou"]
            + config.align_weight * loss_align
        )
    return losses


def _check_matching(logits, boxes, targets, config, indices, num_boxes):
    """`(config, indices, num_boxes)` of `rec_loss` after checking its inputs; the matching is computed when not
    given, N defaults to the number of target boxes (at least 1)."""
    config = RECLossConfig() if config is None else config
    if not isinstance(config, RECLossConfig):
        raise ValueError(f"`config` is a {type(config).__name__}; pass a RECLossConfig.")
    check_predictions(logits, boxes)
    batch, num_queries = logits.shape[:2]
    sizes = check_targets(targets, batch, num_queries)
    if indices is None:
        indices = config.matcher()(logits, boxes, targets)
    elif len(indices) != batch or any(len(q) != n or len(t) != n for (q, t), n in zip(indices, sizes)):
        raise ValueError(
            f"`indices` does not match `targets` (boxes per sample {sizes}); pass the matcher's output for these "
            "targets, or leave `indices` out."
        )
    if num_boxes is None:
        num_boxes = max(sum(sizes), 1)
    elif not num_boxes > 0:
        raise ValueError(f"`num_boxes` is {num_boxes}; pass the (positive) number of target boxes.")
    return config, indices, num_boxes


def _matched_losses(
    logits: torch.Tensor, boxes: torch.Tensor, targets, indices, config: RECLossConfig, num_boxes: float
) -> dict[str, torch.Tensor]:
    """`loss_ce` over all queries and `loss_l1`, `loss_giou` over the matched ones (full-precision inputs)."""
    batch, num_queries = logits.shape[:2]
    device = logits.device
    batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)  # (N,)
    query_idx = torch.cat([q for q, _ in indices]).to(device)  # (N,)
    # classification: matched queries are "object" (0), all others "no object" (1)
    classes = torch.ones(batch, num_queries, dtype=torch.int64, device=device)  # (B, Q)
    classes[batch_idx, query_idx] = 0
    class_weight = torch.tensor([1.0, config.no_object_weight], dtype=logits.dtype, device=device)
    loss_ce = F.cross_entropy(logits.flatten(0, 1), classes.flatten(), weight=class_weight)  # weighted mean
    # boxes: matched pairs only
    pred = boxes[batch_idx, query_idx]  # (N, 4)
    tgt = torch.cat([upcast(t["boxes"]).to(device)[ti.to(device)] for t, (_, ti) in zip(targets, indices)])
    tgt = tgt.to(pred.dtype)  # (N, 4), target j of each sample in matched order
    loss_l1 = (pred - tgt).abs().sum() / num_boxes
    giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt), aligned=True)  # (N,)
    loss_giou = (1 - giou).sum() / num_boxes
    return {"loss_ce": loss_ce, "loss_l1": loss_l1, "loss_giou": loss_giou}


class RECLoss(nn.Module):
    """The REC loss on an `AdapterOutput` (a module without parameters, holding its config and matcher).

    Args:
        config (`RECLossConfig`, *optional*): weights; defaults to DPT's.
    """

    def __init__(self, config: RECLossConfig | None = None):
        super().__init__()
        self.config = RECLossConfig() if config is None else config
        if not isinstance(self.config, RECLossConfig):
            raise ValueError(f"`config` is a {type(self.config).__name__}; pass a RECLossConfig.")
        self.matcher = self.config.matcher()

    def forward(
        self,
        output,
        targets: Sequence[Mapping[str, torch.Tensor]],
        token_mask: torch.Tensor | None = None,
        num_boxes: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            output (`AdapterOutput`): the adapter's outputs (`rec_logits`, `boxes`, `rec_embeds`, `token_embeds`).
            targets, token_mask, num_boxes: as in `rec_loss`.

        Returns:
            `dict[str, torch.Tensor]`: as `rec_loss`.
        """
        indices = self.matcher(output.rec_logits, output.boxes, targets)
        return rec_loss(
            output.rec_logits,
            output.boxes,
            targets,
            output.rec_embeds,
            output.token_embeds,
            token_mask=token_mask,
            config=self.config,
            indices=indices,
            num_boxes=num_boxes,
        )
