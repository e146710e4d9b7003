"""Box utilities for the REC loss and matcher: format conversion, area, IoU and generalized IoU.

Two formats, both as `(..., 4)` tensors in any unit (the adapter uses coordinates normalised to [0, 1]):

    cxcywh   (cx, cy, w, h)   centre, width and height; what the adapter predicts and what REC targets give
    xyxy     (x0, y0, x1, y1) top-left and bottom-right corners

For boxes A, B and C the smallest box enclosing both (Rezatofighi et al., CVPR 2019):

    IoU(A, B)  = |A ∩ B| / |A ∪ B|,            |A ∪ B| = |A| + |B| - |A ∩ B|
    GIoU(A, B) = IoU(A, B) - (|C| - |A ∪ B|) / |C|          in [-1, 1]; 1 for identical boxes

Validity. A box with x1 < x0 or y1 < y0 (xyxy), or with w < 0 or h < 0 (cxcywh), or with a non-finite
coordinate is rejected with a ValueError. Zero-area boxes (x1 == x0 or y1 == y0, w == 0 or h == 0) are accepted:
a pair whose union has zero area has IoU 0 (its intersection is then 0 too), and a pair whose enclosing box has zero
area has a penalty term of 0, so GIoU = IoU = 0 there. These are the limits as a box shrinks onto a zero-area box
(the intersection vanishes first), they are never NaN, and their gradients are finite. Checking validity reads the
boxes once on the host (one device synchronisation per call).

Example:
    >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    >>> b = torch.tensor([[2.0, 2.0, 3.0, 3.0]])
    >>> generalized_box_iou(a, b)  # disjoint: 0 - (9 - 2) / 9
    tensor([[-0.7778]])
"""

from __future__ import annotations

import torch

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "check_boxes",
]


def check_boxes(boxes: torch.Tensor, fmt: str = "xyxy", name: str = "boxes") -> None:
    """Raise a ValueError unless `boxes` is a `(..., 4)` tensor of finite, non-degenerate boxes in format `fmt`.

    Args:
        boxes (`torch.Tensor` of shape `(..., 4)`): the boxes.
        fmt (`str`, defaults to `"xyxy"`): `"xyxy"` (needs x1 >= x0 and y1 >= y0) or `"cxcywh"` (needs w, h >= 0).
        name (`str`, defaults to `"boxes"`): the argument's name, for the error message.
    """
    if fmt not in ("xyxy", "cxcywh"):
        raise ValueError(f"`fmt` is {fmt!r}; pass 'xyxy' or 'cxcywh'.")
    if not isinstance(boxes, torch.Tensor) or boxes.ndim == 0 or boxes.shape[-1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"`{name}` is {shape}; pass a tensor of shape (..., 4) with boxes in {fmt} format.")
    if not boxes.is_floating_point():
        raise ValueError(f"`{name}` has dtype {boxes.dtype}; pass floating-point boxes, e.g. `{name}.float()`.")
    if boxes.numel() == 0:
        return
    finite = torch.isfinite(boxes).all(dim=-1)  # (...)
    if fmt == "xyxy":
        ordered = (boxes[..., 2] >= boxes[..., 0]) & (boxes[..., 3] >= boxes[..., 1])  # (...)
        rule = "need x1 >= x0 and y1 >= y0"
    else:
        ordered = (boxes[..., 2] >= 0) & (boxes[..., 3] >= 0)  # (...)
        rule = "need w >= 0 and h >= 0"
    bad = ~(finite & ordered)
    if bad.any():
        index = tuple(bad.nonzero()[0].tolist())
        first = [round(v, 6) for v in boxes[index].tolist()]
        raise ValueError(
            f"`{name}` has {int(bad.sum())} degenerate or non-finite {fmt} box(es), the first at index {index}: "
            f"{first}; {fmt} boxes {rule} and finite coordinates. Check the box format (cxcywh vs xyxy)."
        )


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1).

    Args:
        boxes (`torch.Tensor` of shape `(..., 4)`): boxes with w, h >= 0.

    Returns:
        `torch.Tensor` of shape `(..., 4)`, same dtype.
    """
    check_boxes(boxes, "cxcywh")
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h).

    Args:
        boxes (`torch.Tensor` of shape `(..., 4)`): boxes with x1 >= x0, y1 >= y0.

    Returns:
        `torch.Tensor` of shape `(..., 4)`, same dtype.
    """
    check_boxes(boxes, "xyxy")
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas `(x1 - x0) * (y1 - y0)` of `(..., 4)` xyxy boxes, shape `(...)`."""
    check_boxes(boxes, "xyxy")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0, else 0; the unused branch divides by 1 so no NaN reaches the gradient."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), torch.zeros_like(num))


def _pair(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two sets of xyxy boxes and broadcast them to `(N, M, 4)` pairs, or `(N, 4)` when aligned."""
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2:
            shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(f"`{name}` is {shape}; pass an (N, 4) tensor of xyxy boxes.")
        check_boxes(boxes, "xyxy", name)
    if aligned:
        if boxes1.shape != boxes2.shape:
            raise ValueError(
                f"aligned=True pairs box i with box i, but `boxes1` is {tuple(boxes1.shape)} and `boxes2` is "
                f"{tuple(boxes2.shape)}; pass equal numbers of boxes, or aligned=False for all pairs."
            )
        return boxes1, boxes2
    return boxes1[:, None, :], boxes2[None, :, :]  # (N, 1, 4), (1, M, 4)


def _iou_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union area of broadcastable xyxy boxes `a`, `b` (already checked)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # (N, 1) or (N,)
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # (1, M) or (N,)
    top_left = torch.maximum(a[..., :2], b[..., :2])  # (N, M, 2)
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area_a + area_b - inter  # (N, M)
    return _safe_divide(inter, union), union


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """Intersection over union of xyxy boxes.

    Args:
        boxes1 (`torch.Tensor` of shape `(N, 4)`): xyxy boxes.
        boxes2 (`torch.Tensor` of shape `(M, 4)`): xyxy boxes.
        aligned (`bool`, defaults to False): pair box i of `boxes1` with box i of `boxes2` only (N == M).

    Returns:
        `torch.Tensor` of shape `(N, M)` (`(N,)` when aligned) in [0, 1]; 0 for pairs with zero union.
    """
    a, b = _pair(boxes1, boxes2, aligned)
    return _iou_union(a, b)[0]


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al., 2019): `IoU - (|C| - |A ∪ B|) / |C|`, C the smallest enclosing box.

    Args:
        boxes1 (`torch.Tensor` of shape `(N, 4)`): xyxy boxes.
        boxes2 (`torch.Tensor` of shape `(M, 4)`): xyxy boxes.
        aligned (`bool`, defaults to False): pair box i of `boxes1` with box i of `boxes2` only (N == M).

    Returns:
        `torch.Tensor` of shape `(N, M)` (`(N,)` when aligned) in [-1, 1]; 0 for pairs whose enclosing box has
        zero area.

    Example:
        >>> generalized_box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]]))  # 1/7 - 2/9
        tensor([[-0.0794]])
    """
    a, b = _pair(boxes1, boxes2, aligned)
    iou, union = _iou_union(a, b)  # (N, M)
    top_left = torch.minimum(a[..., :2], b[..., :2])  # (N, M, 2)
    bottom_right = torch.maximum(a[..., 2:], b[..., 2:])  # (N, M, 2)
    wh = bottom_right - top_left  # (N, M, 2), >= 0 for valid boxes
    enclosing = wh[..., 0] * wh[..., 1]  # (N, M)
    return iou - _safe_divide(enclosing - union, enclosing)
