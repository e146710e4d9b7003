"""Hungarian matching of REC queries to target boxes, as in DETR (Carion et al., ECCV 2020).

For sample b with Q predictions and n_b <= Q targets, the cost of giving target j to query i is

    C[i, j] = w_class * (-p_i(object)) + w_l1 * ||box_i - box_j||_1 + w_giou * (-GIoU(box_i, box_j))

with p_i(object) = softmax(logits_i)[0] the probability of the "referred object" class, the L1 distance taken
on (cx, cy, w, h) and GIoU on the corner form. The one-to-one assignment of minimal total cost is found with
`scipy.optimize.linear_sum_assignment`; the Q - n_b queries left over are "no object". Matching is a
non-differentiable step and runs under `torch.no_grad()`.

Example:
    >>> matcher = HungarianMatcher()
    >>> logits, boxes = torch.randn(2, 5, 2), torch.rand(2, 5, 4) * 0.5 + 0.25   # (B, Q, 2), (B, Q, 4)
    >>> targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}, {"boxes": torch.zeros(0, 4)}]
    >>> [(q.tolist(), t.tolist()) for q, t in matcher(logits, boxes, targets)]   # doctest: +SKIP
    [([3], [0]), ([], [])]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from scipy.optimize import linear_sum_assignment

from ._precision import full_precision, upcast
from .box_ops import box_cxcywh_to_xyxy, check_boxes, generalized_box_iou

__all__ = ["HungarianMatcher", "check_predictions", "check_targets"]


def check_targets(targets: Sequence[Mapping[str, torch.Tensor]], batch: int, num_queries: int) -> list[int]:
    """Check REC targets and return the number of boxes of each sample.

    Args:
        targets (`Sequence[Mapping[str, torch.Tensor]]`): one dict per sample, with `boxes` of shape `(n_b, 4)`,
            (cx, cy, w, h) in the units of the predictions.
        batch (`int`): the number of samples B of the predictions.
        num_queries (`int`): the number of queries Q of the predictions; n_b may not exceed it.
    """
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence) or len(targets) != batch:
        found = f"{len(targets)} targets" if isinstance(targets, Sequence) else type(targets).__name__
        raise ValueError(
            f"`targets` must be a list of one dict per sample ({batch} for these predictions); got {found}."
        )
    sizes = []
    for b, target in enumerate(targets):
        if not isinstance(target, Mapping) or "boxes" not in target:
            keys = sorted(target) if isinstance(target, Mapping) else type(target).__name__
            raise ValueError(f"`targets[{b}]` has no 'boxes' (found {keys}); pass {{'boxes': (n, 4) cxcywh, ...}}.")
        boxes = target["boxes"]
        if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(f"`targets[{b}]['boxes']` is {shape}; pass an (n, 4) tensor of cxcywh boxes.")
        check_boxes(boxes, "cxcywh", f"targets[{b}]['boxes']")
        if boxes.shape[0] > num_queries:
            raise ValueError(
                f"`targets[{b}]` has {boxes.shape[0]} boxes but the model has only {num_queries} REC queries; "
                "each box needs its own query: use more queries (`num_rec_queries`) or fewer boxes per sample."
            )
        sizes.append(boxes.shape[0])
    return sizes


def check_predictions(logits: torch.Tensor, boxes: torch.Tensor) -> None:
    """Raise a ValueError unless `logits` is `(B, Q, 2)` and `boxes` `(B, Q, 4)` valid cxcywh boxes."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[-1] != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"`logits` is {shape}; pass (B, Q, 2) logits of [referred object, no object].")
    if not isinstance(boxes, torch.Tensor) or boxes.shape != logits.shape[:2] + (4,):
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(
            f"`boxes` is {shape} but `logits` is {tuple(logits.shape)}; pass boxes of shape "
            f"{tuple(logits.shape[:2]) + (4,)}, (cx, cy, w, h) for each query."
        )
    check_boxes(boxes, "cxcywh", "boxes")


class HungarianMatcher:
    """One-to-one assignment of predicted boxes to target boxes by minimal DETR matching cost.

    Args:
        class_weight (`float`, defaults to 1.0): weight of the class cost, minus the probability of "object".
        l1_weight (`float`, defaults to 5.0): weight of the L1 distance between (cx, cy, w, h) boxes.
        giou_weight (`float`, defaults to 2.0): weight of the GIoU cost, minus the generalized IoU.
    """

    def __init__(self, class_weight: float = 1.0, l1_weight: float = 5.0, giou_weight: float = 2.0):
        weights = {"class_weight": class_weight, "l1_weight": l1_weight, "giou_weight": giou_weight}
        for name, value in weights.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` is {value!r}; matching cost weights must be finite numbers >= 0.")
        if not any(weights.values()):
            raise ValueError("All matching cost weights are 0, so every assignment costs the same; set one > 0.")
        self.class_weight, self.l1_weight, self.giou_weight = float(class_weight), float(l1_weight), float(giou_weight)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(class_weight={self.class_weight}, l1_weight={self.l1_weight}, "
            f"giou_weight={self.giou_weight})"
        )

    @torch.no_grad()
    def cost_matrices(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[torch.Tensor]:
        """The matching costs, one `(Q, n_b)` float tensor on the CPU per sample (arguments as `__call__`)."""
        check_predictions(logits, boxes)
        sizes = check_targets(targets, logits.shape[0], logits.shape[1])
        batch, num_queries = logits.shape[:2]
        with full_precision(logits.device):
            prob = upcast(logits).flatten(0, 1).softmax(-1)  # (B*Q, 2)
            pred = upcast(boxes).flatten(0, 1)  # (B*Q, 4)
            tgt = torch.cat([upcast(t["boxes"]).to(pred) for t in targets])  # (N, 4), N = sum of n_b
            cost_class = -prob[:, :1]  # (B*Q, 1), broadcast over targets
            cost_l1 = torch.cdist(pred, tgt, p=1)  # (B*Q, N)
            cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt))  # (B*Q, N)
            cost = self.class_weight * cost_class + self.l1_weight * cost_l1 + self.giou_weight * cost_giou
        cost = cost.view(batch, num_queries, cost.shape[-1]).cpu()  # (B, Q, N)
        # sample b only competes for its own targets: columns of the other samples are dropped
        return [c[b] for b, c in enumerate(cost.split(sizes, dim=-1))]  # B x (Q, n_b)

    @torch.no_grad()
    def __call__(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match queries to targets.

        Args:
            logits (`torch.Tensor` of shape `(B, Q, 2)`): logits of [referred object, no object].
            boxes (`torch.Tensor` of shape `(B, Q, 4)`): predicted boxes (cx, cy, w, h).
            targets (`Sequence[Mapping[str, torch.Tensor]]`): B dicts, each with `boxes` of shape `(n_b, 4)`
                (cx, cy, w, h), n_b <= Q; other keys are ignored.

        Returns:
            `list[tuple[torch.Tensor, torch.Tensor]]`: for each sample, `(query_idx, target_idx)`, two int64
            tensors of length n_b on the CPU, sorted by query: query `query_idx[k]` predicts target box
            `target_idx[k]`.
        """
        indices = []
        for b, cost in enumerate(self.cost_matrices(logits, boxes, targets)):
            if not torch.isfinite(cost).all():
                raise ValueError(
                    f"The matching cost of sample {b} is not finite; the predicted `logits` or `boxes` contain "
                    "NaN or infinity (a diverged model or an overflow in half precision)."
                )
            rows, cols = linear_sum_assignment(cost.numpy())  # rows ascending
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
