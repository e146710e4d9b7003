"""Referring expressions with boxes: MDETR / RefCOCO(+/g) COCO-format JSON, or a plain list.

Formats accepted (`annotations` is a JSON file):

- COCO format, as MDETR's `final_refcoco_train.json` (and Flickr30k entities' `final_flickr_*.json`):
  ```
  {"images": [{"id": 0, "file_name": "COCO_train2014_000000000009.jpg", "height": 480, "width": 640,
               "caption": "the plate on the left"}, ...],
   "annotations": [{"id": 3, "image_id": 0, "bbox": [x, y, w, h], "category_id": 51,
                    "tokens_positive": [[4, 9]]}, ...]}
  ```
  Each entry of `images` is one expression (MDETR repeats `file_name` once per expression); its item's phrase is
  its `caption` and its boxes are the annotations with its `id`, in file order. `tokens_positive` are character
  spans `[start, end)` of the caption naming the box; an annotation without them names the whole caption.
  Entries of `images` without annotations are skipped. Other fields are ignored.
- A plain list, one entry per expression:
  ```
  [{"image": "000000000009.jpg", "phrase": "the plate on the left", "bbox": [x, y, w, h]}, ...]
  ```
  `"sentence"` may replace `"phrase"`, and `"bbox"` may be a list of boxes. `"width"` and `"height"` are optional:
  without them the image size is read from the file when the item is read.

`bbox` is COCO's `[x, y, w, h]` in pixels, `(x, y)` the top-left corner. Boxes are checked against the image size:
a box with `w <= 0` or `h <= 0`, or extending beyond the image by more than 1 pixel (rounding in the annotation
tools), is rejected with a `ValueError`; a box within that 1-pixel tolerance is clipped to the image.

Each item: `{"image": PIL RGB, "phrase": str, "boxes": float32 tensor (n, 4) as (cx, cy, w, h) divided by the
image width/height (so in [0, 1]), "phrase_spans": list of (start, end) character spans of the phrase naming
the boxes (no repeats, in order of first use), "box_spans": for each box, its list of spans}`.

Example:
    >>> data = ReferringExpressions("final_refcoco_train.json", "coco/train2014")
    >>> item = data[0]
    >>> item["phrase"], item["boxes"]  # (n, 4) normalised cxcywh
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ._files import check_images_exist, load_rgb, read_json

__all__ = ["ReferringExpressions", "normalize_box"]

TOLERANCE = 1.0  # pixels a box may extend beyond the image before it is rejected (within it, it is clipped)


def normalize_box(bbox, width: float, height: float, where: str) -> list[float]:
    """COCO `[x, y, w, h]` pixels -> `[cx, cy, w, h]` divided by the image size, after the checks above.

    Args:
        bbox (`list[float]`): `[x, y, w, h]` in pixels.
        width, height (`float`): the image size in pixels.
        where (`str`): names the annotation in error messages.

    Example:
        >>> normalize_box([4, 2, 8, 6], 40, 20, "annotation 0")
        [0.2, 0.25, 0.2, 0.3]
    """
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise ValueError(f"{where} has bbox {bbox!r}; pass [x, y, w, h] in pixels (COCO format).")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise ValueError(f"{where} has zero-size bbox {bbox!r} (w and h must be > 0); remove or fix the annotation.")
    if x < -TOLERANCE or y < -TOLERANCE or x + w > width + TOLERANCE or y + h > height + TOLERANCE:
        raise ValueError(
            f"{where} has bbox {bbox!r} ([x, y, w, h] pixels) extending beyond its {width:g}x{height:g} (width x "
            f"height) image by more than {TOLERANCE:g} pixel; check the image size and the box format."
        )
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"{where} has bbox {bbox!r}, which has zero size once clipped to the {width:g}x{height:g} image."
        )
    return [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]


def _spans(tokens_positive, phrase: str, where: str) -> list[tuple[int, int]]:
    if tokens_positive is None:
        return [(0, len(phrase))]
    spans = []
    for span in tokens_positive if isinstance(tokens_positive, list) else [None]:
        ok = isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, int) for v in span)
        if not ok or not 0 <= span[0] < span[1] <= len(phrase):
            raise ValueError(
                f"{where} has tokens_positive {tokens_positive!r}; pass [[start, end], ...] character spans with "
                f"0 <= start < end <= {len(phrase)} (the caption's length)."
            )
        spans.append((span[0], span[1]))
    return spans


def _coco_rows(data: dict) -> list[dict]:
    by_image: dict = {}
    for k, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise ValueError(f"`annotations` annotations[{k}] is {ann!r}; each needs an `image_id` and a `bbox`.")
        by_image.setdefault(ann["image_id"], []).append((k, ann))
    rows = []
    for k, image in enumerate(data["images"]):
        anns = by_image.get(image.get("id") if isinstance(image, dict) else None)
        if not anns:
            continue
        size_ok = all(isinstance(image.get(f), (int, float)) and image.get(f) > 0 for f in ("width", "height"))
        if not isinstance(image.get("file_name"), str) or not isinstance(image.get("caption"), str) or not size_ok:
            raise ValueError(
                f"`annotations` images[{k}] is {image!r}; each image needs `file_name`, `width`, `height` and the "
                "expression as `caption` (MDETR format)."
            )
        phrase, width, height = image["caption"], image["width"], image["height"]
        boxes, box_spans = [], []
        for j, ann in anns:
            where = f"`annotations` annotations[{j}] (id {ann.get('id')!r}, image {image['file_name']!r})"
            boxes.append(normalize_box(ann.get("bbox"), width, height, where))
            box_spans.append(_spans(ann.get("tokens_positive"), phrase, where))
        rows.append({"file_name": image["file_name"], "phrase": phrase, "boxes": boxes, "box_spans": box_spans})
    return rows


def _list_rows(data: list) -> list[dict]:
    rows = []
    for k, entry in enumerate(data):
        phrase = entry.get("phrase", entry.get("sentence")) if isinstance(entry, dict) else None
        if not isinstance(phrase, str) or not isinstance(entry.get("image"), str) or "bbox" not in entry:
            raise ValueError(
                f"`annotations`[{k}] is {entry!r}; each entry needs `image`, `phrase` (or `sentence`) and `bbox`."
            )
        bbox = entry["bbox"]
        bboxes = bbox if isinstance(bbox, list) and bbox and isinstance(bbox[0], (list, tuple)) else [bbox]
        where = f"`annotations`[{k}] (image {entry['image']!r})"
        row = {"file_name": entry["image"], "phrase": phrase, "bbox": bboxes, "where": where}
        row["box_spans"] = [[(0, len(phrase))] for _ in bboxes]
        if "width" in entry or "height" in entry:
            size = (entry.get("width"), entry.get("height"))
            if not all(isinstance(v, (int, float)) and v > 0 for v in size):
                raise ValueError(f"{where} has width, height {size!r}; give both as positive pixels, or neither.")
            row["boxes"] = [normalize_box(b, *size, where) for b in bboxes]
        rows.append(row)
    return rows


class ReferringExpressions(Dataset):
    """Referring expressions (phrase -> boxes) from MDETR/RefCOCO COCO-format JSON or a plain list.

    Args:
        annotations (`str` or `os.PathLike`): the JSON file (formats in the module docstring).
        image_root (`str` or `os.PathLike`): folder holding the images' `file_name`s.

    All boxes with a known image size are checked when the dataset is built, and every image file must exist;
    no image is opened until an item is read.

    Example:
        >>> data = ReferringExpressions("refs.json", "images")
        >>> data[0]["boxes"].shape
        torch.Size([1, 4])
    """

    def __init__(self, annotations: str | os.PathLike, image_root: str | os.PathLike):
        data = read_json(annotations, "annotations")
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            self.rows = _coco_rows(data)
        elif isinstance(data, list):
            self.rows = _list_rows(data)
        else:
            raise ValueError(
                f"`annotations` file {str(annotations)!r} is neither COCO format (an object with `images` and "
                "`annotations`) nor a list of {image, phrase, bbox} entries."
            )
        if not self.rows:
            raise ValueError(
                f"`annotations` file {str(annotations)!r} has no expressions with boxes; the dataset is empty."
            )
        self.paths = check_images_exist([r["file_name"] for r in self.rows], image_root, "annotations")
        self.image_root = Path(image_root)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        image = load_rgb(self.paths[index])
        boxes = row.get("boxes")
        if boxes is None:  # plain list without width/height: checked against the file's size now
            boxes = [normalize_box(b, *image.size, row["where"]) for b in row["bbox"]]
        box_spans = [list(spans) for spans in row["box_spans"]]
        return {
            "image": image,
            "phrase": row["phrase"],
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "phrase_spans": list(dict.fromkeys(s for spans in box_spans for s in spans)),
            "box_spans": box_spans,
        }
