"""A transformers object detector from a local folder, as `detect(images, nouns, threshold) -> boxes per noun`.

Two kinds, chosen from the folder's config:

- zero-shot (`AutoModelForZeroShotObjectDetection`): OWLv2, OWL-ViT (the nouns are the text queries) and Grounding
  DINO (the nouns joined as "dog. cat."; a phrase it returns names the noun it equals or contains, or is dropped),
  with their processors' `post_process_grounded_object_detection`;
- closed-set (`AutoModelForObjectDetection`, e.g. DETR): the nouns must be labels of `config.id2label` (compared
  lower-case, singular or not); a noun that is not one is a ValueError naming it, raised before the model runs.

Example:
    >>> detector = TransformersDetector.from_pretrained("/models/owlv2-base-patch16-ensemble")
    >>> detector.detect([image], [["dog", "cat"]], threshold=0.3)[0][0]
    Detection(noun='dog', score=0.71, box=(12.0, 40.5, 180.2, 230.0))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
import torch

from .detection_spec import singular
from .inputs import require_folder

__all__ = ["DETECTOR_SOURCE", "Detection", "TransformersDetector"]

DETECTOR_SOURCE = (
    "download a detector there, e.g. `huggingface-cli download google/owlv2-base-patch16-ensemble --local-dir {path}` "
    "(zero-shot: any noun) or `huggingface-cli download facebook/detr-resnet-50 --local-dir {path}` (COCO labels)"
)
_OWL, _GROUNDING = ("owlv2", "owlvit"), ("grounding-dino", "mm-grounding-dino")


@dataclass(frozen=True)
class Detection:
    """One detected box.

    Attributes:
        noun (str): which of the queried nouns it is.
        score (float): the detector's confidence.
        box (tuple[float, float, float, float]): (x0, y0, x1, y1) in pixels of the input image.
    """

    noun: str
    score: float
    box: tuple[float, float, float, float]


class TransformersDetector:
    """A transformers zero-shot or closed-set detector (see the module docstring).

    Args:
        model: e.g. `Owlv2ForObjectDetection`, `DetrForObjectDetection` (its device and dtype are used).
        processor: its `AutoProcessor` (an image processor alone for closed-set models).
        batch_size (int): images per forward pass. Default 8.
        text_threshold (float): Grounding DINO's token threshold for its phrases. Default 0.25.

    Attributes:
        model (str): e.g. "Owlv2ForObjectDetection at /models/owlv2". kind (str): "zero-shot" or "closed-set".

    Raises:
        ValueError: a model of a kind this class cannot read (names it and what it reads).
    """

    def __init__(self, model, processor, batch_size: int = 8, text_threshold: float = 0.25):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        if model_type in _OWL + _GROUNDING:
            self.kind = "zero-shot"
        elif callable(getattr(processor, "post_process_object_detection", None)) and id2label:
            self.kind = "closed-set"
        else:
            raise ValueError(
                f"`model` is a {type(model).__name__} (model_type {model_type!r}); pass a zero-shot detector "
                f"({', '.join(_OWL + _GROUNDING)}) or a closed-set one with config.id2label and an image processor "
                "with post_process_object_detection (DETR and its relatives)."
            )
        self.detector, self.processor, self.model_type = model.eval(), processor, model_type
        self.batch_size, self.text_threshold = batch_size, float(text_threshold)
        self.labels = {str(name).lower(): int(i) for i, name in id2label.items()}
        where = getattr(model, "name_or_path", "")
        self.model = f"{type(model).__name__} at {where}" if where else type(model).__name__

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs):
        """A detector from a local transformers folder (offline): zero-shot if its model type is one, else closed-set.

        Raises:
            FileNotFoundError: no model at `path` (names it and how to download one), before anything loads.
        """
        from transformers import (
            AutoConfig,
            AutoModelForObjectDetection,
            AutoModelForZeroShotObjectDetection,
            AutoProcessor,
        )

        folder = require_folder(path, DETECTOR_SOURCE)
        zero_shot = AutoConfig.from_pretrained(folder, local_files_only=True).model_type in _OWL + _GROUNDING
        auto = AutoModelForZeroShotObjectDetection if zero_shot else AutoModelForObjectDetection
        model = auto.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)
        return cls(model, AutoProcessor.from_pretrained(folder, local_files_only=True), **kwargs)

    def _label_ids(self, nouns: Sequence[str]) -> dict[int, str]:
        ids = {}
        for noun in nouns:
            label = next((n for n in (noun, singular(noun)) if n in self.labels), None)
            label = label or next((name for name in self.labels if singular(name) == noun), None)
            if label is None:
                known = ", ".join(sorted(self.labels)[:20])
                raise ValueError(
                    f"The noun {noun!r} is not a label of the closed-set detector {self.model} (labels: {known}"
                    f"{', ...' if len(self.labels) > 20 else ''}); use prompts with its labels or a zero-shot "
                    "detector such as OWLv2."
                )
            ids[self.labels[label]] = noun
        return ids

    @torch.no_grad()
    def detect(self, images: list[PIL.Image.Image], nouns: list[list[str]], threshold: float) -> list[list[Detection]]:
        """Boxes scoring above `threshold` of the nouns of image i, as its processor post-processes them.

        Args:
            images (list[PIL.Image.Image]): N RGB images.
            nouns (list[list[str]]): the nouns to find in each image (at least one each).
            threshold (float): the post-processing's score threshold.

        Returns:
            list[list[Detection]]: per image, boxes in its pixels, in the post-processing's order.

        Raises:
            ValueError: a noun a closed-set detector has no label for (names it), before the model runs.
        """
        if self.kind == "closed-set":
            label_ids = [self._label_ids(n) for n in nouns]
        out = []
        for start in range(0, len(images), self.batch_size):
            part, queries = images[start : start + self.batch_size], nouns[start : start + self.batch_size]
            sizes = [(i.height, i.width) for i in part]
            if self.kind == "closed-set":
                results = self._run(part, None, sizes, threshold)
                ids = label_ids[start : start + self.batch_size]
                named = [[i.get(j) for j in r["labels"].tolist()] for r, i in zip(results, ids)]
            elif self.model_type in _OWL:  # OWLv2 pads to a square at the bottom right; OWL-ViT stretches
                square = [(max(s), max(s)) for s in sizes] if self.model_type == "owlv2" else sizes
                results = self._run(part, queries, square, threshold)
                named = [[q[j] if j < len(q) else None for j in r["labels"].tolist()] for r, q in zip(results, queries)]
            else:
                results = self._run(part, queries, sizes, threshold)
                named = [[_noun_of(t, q) for t in r["text_labels"]] for r, q in zip(results, queries)]
            for r, names in zip(results, named):
                scores, boxes = r["scores"].float().tolist(), r["boxes"].float().tolist()
                out.append([Detection(n, s, tuple(b)) for n, s, b in zip(names, scores, boxes) if n is not None])
        return out

    def _run(self, images, queries, sizes, threshold) -> list[dict]:
        param = next(self.detector.parameters())
        if queries is None:
            inputs = self.processor(images=images, return_tensors="pt")
        elif self.model_type in _OWL:
            inputs = self.processor(text=[list(q) for q in queries], images=images, return_tensors="pt")
        else:  # Grounding DINO: "dog. cat." per image, padded to the longest
            inputs = self.processor(text=[list(q) for q in queries], images=images, padding=True, return_tensors="pt")
        inputs = {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
        outputs = self.detector(**inputs)
        if queries is None:
            return self.processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
        if self.model_type in _OWL:
            return self.processor.post_process_grounded_object_detection(outputs, threshold, target_sizes=sizes)
        return self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold, self.text_threshold, target_sizes=sizes
        )


def _noun_of(phrase: str, nouns: Sequence[str]) -> str | None:
    """The noun a Grounding DINO phrase names: the one it equals, else the longest it contains, else None."""
    phrase = phrase.strip().lower()
    return phrase if phrase in nouns else max((n for n in nouns if n in phrase), key=len, default=None)
