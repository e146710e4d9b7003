"""COCO captions with optional NegCLIP-style hard negatives.

Formats accepted:

- `annotations`: a COCO captions JSON (e.g. `captions_train2017.json`, Karpathy-split files in COCO format)
  ```
  {"images": [{"id": 9, "file_name": "000000000009.jpg", ...}, ...],
   "annotations": [{"id": 48, "image_id": 9, "caption": "A plate of food."}, ...]}
  ```
  Image files are `image_root / file_name`. Other fields are ignored.
- `negatives` (optional): a JSON object mapping an annotation id to its hard negatives
  ```
  {"48": {"neg_captions": ["A plate of drinks."], "neg_image_ids": [25, 30]}, ...}
  ```
  The key is the annotation's `id` (as a string, since JSON keys are strings); when the annotations have no `id`
  field the key is the annotation's position in `annotations` (`"0"`, `"1"`, ...). Both fields are optional
  (missing = no negatives); `neg_image_ids` are `id`s of entries of `images`. Annotations not in the mapping
  have no negatives. This is NegCLIP's information (its CSV's `neg_caption` and `neg_image` columns) keyed
  by COCO ids instead of CSV row numbers.

One item per caption, in the order of `annotations`:
`{"image": PIL RGB, "caption": str, "neg_captions": list[str], "neg_images": LazyImages, "image_id": int,
"annotation_id": int}`. `neg_images` is a sequence of PIL RGB images opened only when indexed
(`list(item["neg_images"])` loads them all).

Example:
    >>> data = CocoCaptions("captions_train2017.json", "train2017", negatives="negclip_negatives.json")
    >>> item = data[0]
    >>> item["caption"], item["neg_captions"], item["neg_images"][0].size
"""

from __future__ import annotations

import os
from pathlib import Path

import PIL.Image
from torch.utils.data import Dataset

from ._files import LazyImages, check_images_exist, load_rgb, read_json

__all__ = ["CocoCaptions"]


def _images_by_id(data, path) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(
            f"`annotations` file {str(path)!r} has no `images` list; pass a COCO captions JSON "
            '({"images": [...], "annotations": [...]}).'
        )
    images = {}
    for k, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise ValueError(f"`annotations` images[{k}] is {entry!r}; each image needs an `id` and a `file_name`.")
        images[entry["id"]] = entry["file_name"]
    return images


def _captions(data, images: dict, path) -> list[dict]:
    annotations = data.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        raise ValueError(
            f"`annotations` file {str(path)!r} has no captions (its `annotations` list is missing or empty); "
            "pass a COCO captions JSON with at least one annotation."
        )
    use_ids = all(isinstance(a, dict) and "id" in a for a in annotations)
    rows, seen = [], set()
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise ValueError(f"`annotations` annotations[{k}] is {ann!r}; each needs an `image_id` and a `caption`.")
        if ann.get("image_id") not in images:
            raise ValueError(
                f"`annotations` annotations[{k}] has image_id {ann.get('image_id')!r}, which is not the id of any "
                "entry of `images`; fix the annotation file."
            )
        ann_id = ann["id"] if use_ids else k
        if ann_id in seen:
            raise ValueError(f"`annotations` has two annotations with id {ann_id!r}; annotation ids must be unique.")
        seen.add(ann_id)
        rows.append({"annotation_id": ann_id, "image_id": ann["image_id"], "caption": ann["caption"]})
    return rows


def _negatives(negatives, rows: list[dict], images: dict) -> dict:
    """{annotation id as str: (neg_captions, neg_image_ids)}, checked against the annotations and images."""
    if negatives is None:
        return {}
    data = negatives if isinstance(negatives, dict) else read_json(negatives, "negatives")
    if not isinstance(data, dict):
        raise ValueError(
            f"`negatives` holds a {type(data).__name__}; pass a JSON object mapping annotation ids to "
            '{"neg_captions": [...], "neg_image_ids": [...]}.'
        )
    known = {str(row["annotation_id"]) for row in rows}
    result = {}
    for key, entry in data.items():
        if str(key) not in known:
            raise ValueError(
                f"`negatives` has key {key!r}, which is not an annotation id of `annotations`; keys are annotation "
                "`id`s (or positions when annotations have no `id`)."
            )
        if not isinstance(entry, dict):
            raise ValueError(f"`negatives`[{key!r}] is {entry!r}; pass an object with `neg_captions`/`neg_image_ids`.")
        captions = entry.get("neg_captions", [])
        ids = entry.get("neg_image_ids", [])
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"`negatives`[{key!r}]['neg_captions'] is {captions!r}; pass a list of strings.")
        if not isinstance(ids, list):
            raise ValueError(f"`negatives`[{key!r}]['neg_image_ids'] is {ids!r}; pass a list of image ids.")
        unknown = [i for i in ids if i not in images]
        if unknown:
            raise ValueError(
                f"`negatives`[{key!r}]['neg_image_ids'] is {ids!r}; {unknown!r} are not ids of entries of `images`."
            )
        result[str(key)] = (list(captions), list(ids))
    return result


class CocoCaptions(Dataset):
    """Image-caption pairs from a COCO captions JSON, with optional hard-negative captions and images.

    Args:
        annotations (`str` or `os.PathLike`): the COCO captions JSON (format in the module docstring).
        image_root (`str` or `os.PathLike`): folder holding the `file_name`s.
        negatives (`str`, `os.PathLike`, `dict` or `None`, defaults to `None`): hard negatives, a JSON file or the
            already parsed mapping (format in the module docstring); `None` gives every caption empty negatives.

    Every image used by a caption or as a negative must exist when the dataset is built; none is opened until an
    item is read.

    Example:
        >>> data = CocoCaptions("captions.json", "images", negatives={"48": {"neg_captions": ["a cat"]}})
        >>> data[0]["neg_captions"]
        ['a cat']
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        image_root: str | os.PathLike,
        negatives: str | os.PathLike | dict | None = None,
    ):
        data = read_json(annotations, "annotations")
        images = _images_by_id(data, annotations)
        self.rows = _captions(data, images, annotations)
        self.negatives = _negatives(negatives, self.rows, images)
        used = {row["image_id"] for row in self.rows} | {i for _, ids in self.negatives.values() for i in ids}
        used = [i for i in images if i in used]
        self.paths: dict = dict(zip(used, check_images_exist([images[i] for i in used], image_root, "annotations")))
        self.image_root = Path(image_root)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, image_id) -> PIL.Image.Image:
        """The RGB image with COCO id `image_id`."""
        return load_rgb(self.paths[image_id])

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        neg_captions, neg_ids = self.negatives.get(str(row["annotation_id"]), ([], []))
        return {
            "image": self.image(row["image_id"]),
            "caption": row["caption"],
            "neg_captions": list(neg_captions),
            "neg_images": LazyImages([self.paths[i] for i in neg_ids]),
            "image_id": row["image_id"],
            "annotation_id": row["annotation_id"],
        }
