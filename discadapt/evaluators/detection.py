"""GenEval-style object checks with a detector: does the image show the objects, counts, colours and relation of the
prompt (`detection_spec.object_spec`)?

`DetectionScorer` is a `Scorer` (1.0 when every check passes, else 0.0) and a `Judge` (a `Judgement` whose reason
names the first failed check, e.g. "found 1 dog, expected 2"). For each image:

1. detect the prompt's nouns (`detector.py`: a transformers zero-shot or closed-set detector, or any object with
   `detect(images, nouns, threshold)`), keep boxes scoring above `threshold` (GenEval: 0.3) and, per noun, drop a box
   overlapping a higher-scoring one by IoU > `iou` (`dedupe`, greedy, pure torch);
2. presence and count, object by object in prompt order: at least one box, exactly `count` boxes when the prompt
   gives a number;
3. colour, object by object: the most confident `count or 1` boxes must all have the colour (GenEval), read by
   `colour_scorer` when given (the colour c maximising `score(crop, "a photo of a {c} {noun}")` over `COLOURS`, as
   GenEval's CLIP on crops, without its segmentation masks) or else by `pixel_colour`;
4. relation between the most confident boxes of objects 0 and 1 (`relative_position`, GenEval's rule).

`pixel_colour(crop)`: the mean RGB of the crop's central region (the middle half in each direction, to leave out
background) in HSV: chroma (max - min) < 0.15 is black (lightness < 0.25), white (> 0.75) or gray; otherwise the hue
names it (degrees: red < 15 or >= 345, orange < 45, yellow < 70, green < 170, blue < 260, purple < 290, pink < 345),
with two lightness corrections: a dark (max < 0.65) hue in [10, 50) is brown, a light (lightness > 0.7) red is pink.

Example:
    >>> scorer = DetectionScorer.from_pretrained("/models/owlv2-base-patch16-ensemble")
    >>> scorer.judge(images, ["a photo of two dogs"])[0].reason
    'found 1 dog, expected 2'
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from ..scorers import Judgement
from .detection_spec import COLOURS, PromptSpec, object_spec, plural
from .detector import Detection, TransformersDetector
from .inputs import check_pairs, to_pil

__all__ = ["DetectionScorer", "box_iou", "dedupe", "pixel_colour", "relative_position"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of `(K, 4)` and `(M, 4)` xyxy boxes -> `(K, M)`."""
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])  # (K, M, 2)
    inter = (rb - lt).clamp(min=0).prod(-1)  # (K, M)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-9)


def dedupe(boxes: torch.Tensor, scores: torch.Tensor, iou: float = 0.5) -> torch.Tensor:
    """Indices of the boxes kept, highest score first: a box overlapping a kept one by IoU > `iou` is dropped.

    Args:
        boxes (torch.Tensor): `(K, 4)` xyxy boxes of one class.
        scores (torch.Tensor): `(K,)` their scores.
        iou (float): the overlap above which the lower-scoring box is a duplicate. Default 0.5.

    Returns:
        torch.Tensor: `(k,)` long indices into `boxes`, by decreasing score.

    Example:
        >>> dedupe(torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]]), torch.tensor([0.5, 0.9, 0.4]))
        tensor([1, 2])
    """
    order = torch.argsort(scores, descending=True, stable=True)
    overlaps = box_iou(boxes[order].float(), boxes[order].float())  # (K, K)
    keep: list[int] = []
    for i in range(len(order)):
        if all(overlaps[i, j] <= iou for j in keep):
            keep.append(i)
    return order[keep]


def relative_position(box_a: Sequence[float], box_b: Sequence[float], margin: float = 0.1) -> set[str]:
    """Where box A is relative to box B, GenEval's rule: the centre offset, shrunk on each axis by `margin` times the
    two boxes' summed size, normalised by the full offset; "left of" if dx < -0.5, "right of" if dx > 0.5, "above" if
    dy < -0.5, "below" if dy > 0.5 (image y grows downwards). Empty when the shrunk offset vanishes.

    Example:
        >>> relative_position([0, 0, 10, 10], [30, 2, 40, 12])
        {'left of'}
    """
    a, b = torch.tensor(box_a, dtype=torch.float64), torch.tensor(box_b, dtype=torch.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2  # (2,) centre of A - centre of B
    size = (a[2:] - a[:2]).abs() + (b[2:] - b[:2]).abs()
    revised = (offset.abs() - margin * size).clamp(min=0) * offset.sign()
    if bool((revised.abs() < 1e-3).all()):
        return set()
    dx, dy = (revised / offset.norm()).tolist()
    found = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return {name for name, holds in found.items() if holds}


def pixel_colour(crop: PIL.Image.Image) -> str:
    """The named colour (`COLOURS`) of a crop's central region by the rule of the module docstring.

    Example:
        >>> pixel_colour(PIL.Image.new("RGB", (8, 8), (200, 30, 30))), pixel_colour(PIL.Image.new("RGB", (8, 8), (120, 60, 20)))
        ('red', 'brown')
    """  # noqa: E501
    x = np.asarray(crop.convert("RGB"), dtype=np.float64) / 255  # (h, w, 3)
    h, w = x.shape[:2]
    r, g, b = x[h // 4 : max(h - h // 4, h // 4 + 1), w // 4 : max(w - w // 4, w // 4 + 1)].reshape(-1, 3).mean(0)
    hue, _, value = colorsys.rgb_to_hsv(r, g, b)
    chroma, lightness, hue = value - min(r, g, b), (value + min(r, g, b)) / 2, hue * 360
    if chroma < 0.15:
        return "black" if lightness < 0.25 else "white" if lightness > 0.75 else "gray"
    if 10 <= hue < 50 and value < 0.65:
        return "brown"
    bins = ((15, "red"), (45, "orange"), (70, "yellow"), (170, "green"), (260, "blue"), (290, "purple"), (345, "pink"))
    name = next((n for top, n in bins if hue < top), "red")
    return "pink" if name == "red" and lightness > 0.7 else name


def _crop(image: PIL.Image.Image, box) -> PIL.Image.Image:
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, y0 = min(max(int(x0), 0), image.width - 1), min(max(int(y0), 0), image.height - 1)
    x1, y1 = min(max(int(np.ceil(x1)), x0 + 1), image.width), min(max(int(np.ceil(y1)), y0 + 1), image.height)
    return image.crop((x0, y0, x1, y1))


class DetectionScorer:
    """GenEval-style checks of (image, prompt) pairs with a detector (see the module docstring).

    Args:
        detector: has `detect(images: list[PIL.Image], nouns: list[list[str]], threshold: float) ->
            list[list[Detection]]` (e.g. `TransformersDetector`) and optionally `model` (str).
        threshold (float): detections scoring above it count. Default 0.3 (GenEval).
        iou (float): same-noun boxes overlapping by more are one object. Default 0.5.
        colour_scorer: optional, any object with `score(images, prompts) -> (N,)` (e.g. a `CLIPScorer`); default
            `pixel_colour`.
        margin (float): `relative_position`'s margin. Default 0.1 (GenEval).
        name (str): for tables. Default "detection".

    Attributes:
        model (str): the detector's model (e.g. "Owlv2ForObjectDetection at /models/owlv2").

    Raises:
        ValueError: a bad argument (names it and the fix).

    Example:
        >>> scorer = DetectionScorer.from_pretrained("/models/owlv2-base-patch16-ensemble")
        >>> scorer.score(images, ["a photo of a dog left of a cat"] * len(images))  # (N,) of 0.0 / 1.0
    """

    def __init__(self, detector, threshold=0.3, iou=0.5, colour_scorer=None, margin=0.1, name: str = "detection"):
        if not callable(getattr(detector, "detect", None)):
            raise ValueError(
                f"`detector` is a {type(detector).__name__}; pass an object with detect(images, nouns, threshold), "
                "e.g. TransformersDetector.from_pretrained(path)."
            )
        for arg, value in (("threshold", threshold), ("iou", iou), ("margin", margin)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"`{arg}` is {value!r}; pass a number in [0, 1).")
        if colour_scorer is not None and not callable(getattr(colour_scorer, "score", None)):
            raise ValueError(
                f"`colour_scorer` is a {type(colour_scorer).__name__}; pass an object with score(images, prompts) "
                "(e.g. a CLIPScorer), or None for the pixel rule."
            )
        self.detector, self.threshold, self.iou, self.margin = detector, float(threshold), float(iou), float(margin)
        self.colour_scorer, self.name = colour_scorer, name
        self.model = str(getattr(detector, "model", type(detector).__name__))

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs):
        """A scorer with a `TransformersDetector` from a local folder (offline).

        Args:
            path (str | PathLike): a transformers detector, e.g. a download of google/owlv2-base-patch16-ensemble.
            device, dtype: where and in what precision the detector runs. Default the CPU, float32.
            **kwargs: the constructor's other arguments (`threshold`, `colour_scorer`, ...) and the detector's
                `batch_size`.

        Raises:
            FileNotFoundError: no model at `path` (names it and how to download one), before anything loads.
        """
        detector_kwargs = {k: kwargs.pop(k) for k in ("batch_size",) if k in kwargs}
        return cls(TransformersDetector.from_pretrained(path, device=device, dtype=dtype, **detector_kwargs), **kwargs)

    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 on the CPU: 1.0 where every check passes, else 0.0."""
        return torch.tensor([float(v.ok) for v in self.judge(images, prompts)], dtype=torch.float32)

    def judge(self, images, prompts: Sequence[str]) -> list[Judgement]:
        """N `Judgement`s: ok when every check passes; the reason names the first failed check (or what was found).

        Raises:
            ValueError: a prompt `object_spec` cannot read, or mismatched images and prompts.
        """
        prompts, pil = check_pairs(images, prompts), to_pil(images)
        specs = [object_spec(p) for p in prompts]  # all prompts read before any detection
        nouns = [list(dict.fromkeys(o.noun for o in spec.objects)) for spec in specs]
        found = self.detector.detect(pil, nouns, self.threshold)
        return [self._check(image, spec, self._group(dets)) for image, spec, dets in zip(pil, specs, found)]

    def _group(self, detections: list[Detection]) -> dict[str, torch.Tensor]:
        """noun -> `(k, 4)` boxes above the threshold, de-duplicated, by decreasing score."""
        groups: dict[str, torch.Tensor] = {}
        for noun in dict.fromkeys(d.noun for d in detections):
            mine = [d for d in detections if d.noun == noun and d.score > self.threshold]
            if mine:
                boxes = torch.tensor([d.box for d in mine], dtype=torch.float32)  # (k, 4)
                groups[noun] = boxes[dedupe(boxes, torch.tensor([d.score for d in mine]), self.iou)]
        return groups

    def _colours(self, image: PIL.Image.Image, boxes: torch.Tensor, noun: str) -> list[str]:
        crops = [_crop(image, box) for box in boxes]
        if self.colour_scorer is None:
            return [pixel_colour(c) for c in crops]
        texts = [f"a photo of a {c} {noun}" for c in COLOURS]
        scores = self.colour_scorer.score([c for c in crops for _ in COLOURS], texts * len(crops))
        best = torch.as_tensor(scores).float().reshape(len(crops), len(COLOURS)).argmax(-1)
        return [COLOURS[i] for i in best.tolist()]

    def _check(self, image: PIL.Image.Image, spec: PromptSpec, boxes: dict[str, torch.Tensor]) -> Judgement:
        empty = torch.zeros(0, 4)
        for obj in spec.objects:
            n = len(boxes.get(obj.noun, empty))
            if n == 0 or obj.count is not None and n != obj.count:
                expected = obj.count if obj.count is not None else "at least 1"
                return Judgement(False, f"found {n} {plural(obj.noun, n)}, expected {expected}")
        for obj in spec.objects:
            if obj.colour is not None:
                colours = self._colours(image, boxes[obj.noun][: obj.count or 1], obj.noun)
                if any(c != obj.colour for c in colours):
                    return Judgement(False, f"expected {obj.colour} {obj.noun}, found {', '.join(colours)}")
        a, b = spec.objects[:2] if len(spec.objects) > 1 else (spec.objects[0], None)
        if spec.relation is not None:
            where = relative_position(boxes[a.noun][0].tolist(), boxes[b.noun][0].tolist(), self.margin)
            if spec.relation not in where:
                seen = " and ".join(sorted(where)) or "overlapping"
                return Judgement(False, f"expected {a.noun} {spec.relation} {b.noun}, found {seen}")
        counts = ", ".join(f"{len(boxes[o.noun])} {plural(o.noun, len(boxes[o.noun]))}" for o in spec.objects)
        return Judgement(True, f"found {counts}" + (f"; {a.noun} {spec.relation} {b.noun}" if spec.relation else ""))
