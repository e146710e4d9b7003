"""ShapeWorld examples as training and evaluation items of `discadapt.train` (item format in
`discadapt.train.data`).

Item `i` of `ShapeWorldItems(n, split, seed)` is example `make_dataset(n, split, seed)[i]`:

    image         the rendered scene (PIL, `image_size` pixels)
    caption       the true caption;  neg_captions: its hard negatives (`negatives.py`), and with `phrase_negatives`
                  each phrase of a two-object or spatial caption alone
    neg_images    for each hard negative, when one exists, the scene edited so that the negative becomes true and the
                  caption false: hard-negative images for the image side of ITM (see `edited_scene`)
    phrase/boxes  for referring captions: the caption and the referent's box (cx, cy, w, h) in [0, 1]; with
                  `phrase_boxes`, for the other captions too: the caption, the box of every object each phrase
                  names ("objects") or, for spatial captions only, the half of the image the relation plans for
                  each phrase ("planned") or for the second phrase only ("planned-second"), and `box_spans`, the
                  phrase's words in the caption (for stage 2's grounding loss)
    category      the caption's category

Example:
    >>> from discadapt.worlds.shapes.adapter_data import ShapeWorldItems
    >>> items = ShapeWorldItems(100, split="train", seed=0)
    >>> item = items[3]
    >>> item["caption"], item["neg_captions"][0], len(item["neg_images"])
    ('a purple triangle to the right of a cyan circle', 'a cyan triangle to the right of a purple circle', 4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset

from ...interaction.critics.layout import plan_layout
from ...losses.box_ops import box_xyxy_to_cxcywh
from .captions import CATEGORIES, PHRASE_BOXES
from .dataset import Example, make_example
from .negatives import DROP_PHRASE, Negative, prompt_negatives
from .palette import COLORS, SHAPES, SIZES, check_choice, side_pixels
from .render import render
from .scenes import MAX_OBJECTS, Obj, Scene
from .semantics import SAFETY_MARGIN, evaluate, matching
from .splits import SPLITS, HeldOut, held_out

__all__ = ["ShapeWorldItems", "edited_scene"]

_ADD_TRIES = 30  # random positions tried when an edit adds an object


def _candidates(scene: Scene, negative: Negative, rng: np.random.Generator) -> list[list[Obj]]:
    """Object lists one edit away from `scene`: recolour, reshape or resize one object, swap the colours or the
    kinds of two, remove one, or add one of a kind the negative names."""
    objs, size = list(scene.objects), scene.image_size
    found: list[list[Obj]] = []

    def replaced(i: int, obj: Obj) -> list[Obj]:
        return objs[:i] + [obj] + objs[i + 1 :]

    for i, o in enumerate(objs):
        found += [replaced(i, dataclasses.replace(o, color=c)) for c in COLORS if c != o.color]
        found += [replaced(i, dataclasses.replace(o, shape=s)) for s in SHAPES if s != o.shape]
        for new_size in SIZES:
            if new_size != o.size:  # same centre, clipped into the image
                side = side_pixels(new_size, size)
                cx, cy = (o.box[0] + o.box[2]) // 2, (o.box[1] + o.box[3]) // 2
                x0, y0 = min(max(cx - side // 2, 0), size - side), min(max(cy - side // 2, 0), size - side)
                found.append(replaced(i, Obj(o.color, o.shape, new_size, (x0, y0, x0 + side, y0 + side), size)))
        if len(objs) > 1:
            found.append(objs[:i] + objs[i + 1 :])
    for i, a in enumerate(objs):
        for j in range(i + 1, len(objs)):
            b = objs[j]
            if a.color != b.color:
                swapped = replaced(i, dataclasses.replace(a, color=b.color))
                swapped[j] = dataclasses.replace(b, color=a.color)
                found.append(swapped)
            if a.kind != b.kind:
                swapped = replaced(i, dataclasses.replace(a, color=b.color, shape=b.shape))
                swapped[j] = dataclasses.replace(b, color=a.color, shape=a.shape)
                found.append(swapped)
    if len(objs) < MAX_OBJECTS:
        for phrase in negative.caption.phrases:
            for _ in range(_ADD_TRIES):
                kind_size = phrase.size or str(rng.choice(list(SIZES)))
                side = side_pixels(kind_size, size)
                x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                color = phrase.color or str(rng.choice(list(COLORS)))
                found.append(objs + [Obj(color, phrase.shape, kind_size, (x, y, x + side, y + side), size)])
    return [found[k] for k in rng.permutation(len(found))]


def edited_scene(
    example: Example, negative: Negative, held: HeldOut | None = None, rng: np.random.Generator | int = 0
) -> Scene | None:
    """`example.scene` edited once so that `negative.caption` is true (with margin `SAFETY_MARGIN`) and
    `example.caption` false (even with margin `-SAFETY_MARGIN`), or None when no single edit does it.

    Edits are tried in a seeded random order (see `_candidates`). Outside "test_ood", an edit may not create an
    object of a held-out (color, shape) pair.

    Example:
        >>> example = make_example((0, 0, 0), "single", "train", image_size=32)
        >>> scene = edited_scene(example, example.negatives[0])
        >>> evaluate(scene.objects, example.negatives[0].caption).ok, evaluate(scene.objects, example.caption).ok
        (True, False)
    """
    held = held_out() if held is None else held
    rng = np.random.default_rng(rng)
    scene = example.scene
    for objects in _candidates(scene, negative, rng):
        if example.split != "test_ood" and any(o.kind in held.pairs for o in objects):
            continue
        try:
            edited = Scene(scene.image_size, tuple(objects), scene.background, scene.texture_seed)
        except ValueError:  # overlapping boxes
            continue
        if (
            evaluate(edited.objects, negative.caption, SAFETY_MARGIN).ok
            and not evaluate(edited.objects, example.caption, -SAFETY_MARGIN).ok
        ):
            return edited
    return None


def _phrase_boxes(example: Example, kind: str) -> tuple[list, list]:
    """Boxes (cx, cy, w, h) for the phrases of a non-referring caption, and per box the character span of its
    phrase's words in the caption ("red circles" of "three red circles"): the boxes of the objects each phrase names
    (`kind` "objects"), or the halves of the image a spatial caption's relation plans for its two phrases
    (`interaction.critics.plan_layout`, "planned"; none for the other categories), or only the second phrase's half
    ("planned-second": the first phrase's words come before the relation's, so a causal text encoder's states of them
    are the same whatever the relation, and no attention key made from them can know where the plan puts it)."""
    caption, text = example.caption, example.caption.text
    if kind in ("planned", "planned-second"):
        planned = [region.box for region in plan_layout(text)] if caption.category == "spatial" else []
        places = [[box_xyxy_to_cxcywh(torch.tensor(box)).tolist()] for box in planned]
        if kind == "planned-second":
            places = [[], *places[1:]]
    else:
        places = [[list(obj.cxcywh) for obj in matching(example.scene.objects, p)] for p in caption.phrases]
    boxes, spans, start = [], [], 0
    for phrase, found in zip(caption.phrases, places):
        words = phrase.words(plural=caption.category == "counting" and caption.count > 1)
        start = text.index(words, start)
        boxes += found
        spans += [[(start, start + len(words))]] * len(found)
        start += len(words)
    return boxes, spans


class ShapeWorldItems(Dataset):
    """ShapeWorld examples as `discadapt.train` items (see the module docstring), made on the fly.

    Args:
        num_examples (`int`): number of items, >= 1.
        split (`str`, defaults to "train"): one of `splits.SPLITS`.
        seed (`int`, defaults to 0): dataset seed (item i is example `(seed, SPLITS.index(split), i)`).
        categories (`Sequence[str]`, defaults to all): categories cycled through, as `make_dataset`.
        image_size (`int`, defaults to 32): image side in pixels (the world pipeline's).
        negative_images (`bool`, defaults to True): add the edited scenes as `neg_images`.
        held (`HeldOut`, *optional*): held-out combinations; `held_out()` by default.
        phrase_negatives (`bool`, defaults to False): add each phrase of a two-object or spatial caption alone to
            `neg_captions` ("a red circle" for "a red circle and a blue square"; `negatives.prompt_negatives`' kind
            `drop_phrase`). They are true of the image but leave an object out: for stage 2's denoising contrast,
            which then asks the caption to explain the image better than either phrase does (generation's most
            common failure is a named object missing), not for ITM, which would call them mismatches.
        phrase_boxes (`str`, *optional*): "objects" gives every caption its objects' boxes, each with its phrase's
            words (`box_spans`), not only the referring ones: what `TuneConfig.grounding_weight` supervises the UNet's
            cross-attention with (and, with `rec_weight`, more REC targets); "planned" gives spatial captions the
            halves of the image their relation plans for each phrase instead (where the layout term of sampling
            steers them; knowable from the words alone, at any noise level); "planned-second" only the second
            phrase's half (the phrase whose words follow the relation). None (default): referring boxes only.

    Attributes:
        categories (`tuple[str, ...]`): reported separately by `evaluate_adapter`.
        fingerprint (`dict`): what identifies the data in a training run record.
    """

    def __init__(
        self,
        num_examples: int,
        split: str = "train",
        seed: int = 0,
        categories: Sequence[str] = CATEGORIES,
        image_size: int = 32,
        negative_images: bool = True,
        held: HeldOut | None = None,
        phrase_negatives: bool = False,
        phrase_boxes: str | None = None,
    ):
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"`num_examples` is {num_examples!r}; pass an int >= 1.")
        check_choice("split", split, SPLITS)
        categories = (categories,) if isinstance(categories, str) else tuple(categories)
        if not categories:
            raise ValueError("`categories` is empty; pass one or more of " + ", ".join(CATEGORIES) + ".")
        for category in categories:
            check_choice("category", category, CATEGORIES)
        if phrase_boxes is not None:
            check_choice("phrase_boxes", phrase_boxes, PHRASE_BOXES)
        self.num_examples, self.split, self.seed = num_examples, split, seed
        self.categories, self.image_size = categories, image_size
        self.negative_images, self.phrase_negatives = negative_images, phrase_negatives
        self.phrase_boxes = phrase_boxes
        self.held = held_out() if held is None else held
        self.fingerprint = {
            "world": "shapes",
            "num_examples": num_examples,
            "split": split,
            "seed": seed,
            "categories": list(categories),
            "image_size": image_size,
            "negative_images": negative_images,
            "held_pairs": sorted(map(list, self.held.pairs)),
        }
        # only when on, so that runs recorded before the options keep their fingerprint
        if phrase_negatives:
            self.fingerprint["phrase_negatives"] = True
        if phrase_boxes:
            self.fingerprint["phrase_boxes"] = phrase_boxes

    def __len__(self) -> int:
        return self.num_examples

    def example(self, index: int) -> Example:
        """The ShapeWorld example of item `index`."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} is out of range for {self.num_examples} items.")
        category = self.categories[index % len(self.categories)]
        seed = (self.seed, SPLITS.index(self.split), index)
        return make_example(seed, category, self.split, image_size=self.image_size, held=self.held)

    def __getitem__(self, index: int) -> dict:
        example = self.example(index)
        item = {
            "image": PIL.Image.fromarray(render(example.scene)),
            "caption": example.caption.text,
            "neg_captions": [n.caption.text for n in example.negatives],
            "category": example.caption.category,
        }
        if self.phrase_negatives:
            item["neg_captions"] += [n.caption.text for n in prompt_negatives(example.caption, kinds=[DROP_PHRASE])]
        if self.negative_images:
            rng = np.random.default_rng((self.seed, SPLITS.index(self.split), index, 1))
            scenes = [edited_scene(example, n, self.held, rng) for n in example.negatives]
            item["neg_images"] = [PIL.Image.fromarray(render(s)) for s in scenes if s is not None]
        if example.referent is not None:
            item["phrase"] = example.caption.text
            item["boxes"] = [list(example.referent.cxcywh)]
        elif self.phrase_boxes:
            item["phrase"] = example.caption.text
            item["boxes"], item["box_spans"] = _phrase_boxes(example, self.phrase_boxes)
        return item
