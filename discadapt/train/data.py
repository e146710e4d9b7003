"""Training items, the order they are read in, and the batches of (image, text) pairs built from them.

Item format
-----------
A training dataset is any map-style dataset (`len` and `[i]`) of dicts; the readers of `discadapt.data` give
them as they are (`CocoCaptions` for ITM, `ReferringExpressions` for REC, `CaptionedFolder` for ITM with random
negatives), and `torch.utils.data.ConcatDataset` mixes them. Keys (all optional but `image`; an item needs a
`caption` or `boxes`):

    image         PIL image, or a (3, H, W) float tensor in [0, 1]         the positive image x
    caption       str                                                       its caption y: ITM positive
    neg_captions  list[str]                                                 hard-negative captions (text side)
    neg_images    sequence of images as `image` (may be lazy, e.g.          hard-negative images (image side):
                  `LazyImages`)                                             each false for `caption`
    phrase        str                                                       referring expression for REC
                                                                            (default: `caption`)
    boxes         float tensor (n, 4) or nested list: (cx, cy, w, h)        the boxes `phrase` refers to
                  normalised to [0, 1]
    box_spans     list (one per box) of lists of (start, end) character     the words naming each box
                  spans of `phrase`                                         (default: the whole phrase)
    category      str                                                       evaluation is also reported per category

Images are resized to `resolution` x `resolution` (no crop, so normalised boxes stay valid). An item is checked
when it is read (`check_item`): a ValueError names the dataset index, the key, the value and the fix.

Order and randomness
--------------------
The global sample stream is the concatenation of seeded permutations of the dataset (one per epoch,
`np.random.default_rng((seed, 1, epoch))`). Sample `g` of the stream goes to optimizer step
`g // (batch_size * grad_accum * P)`, and within it to micro-step, process and slot in that order (P processes).
Everything random about a sample (its timestep, noise, random negatives, the choice among more hard negatives than
needed) comes from generators seeded by `(seed, 2, g)`, so batch `m` of process `p` is a pure function of
`(config, dataset, P, m, p)`: a resumed run reads exactly the batches an uninterrupted run would, whatever the
number of DataLoader workers.

Batches
-------
`Batch` lists the unique images and texts of a micro-batch and the (image, text, sample) pairs the UNet and
adapter must score; the loss tables index those pairs (positive in column 0, -1 pads):

    text_table   (B_t, 1 + k_t)  [pair(x_b, y_b), pair(x_b, y'_1), ...]     rows: samples with negative captions
    image_table  (B_i, 1 + k_i)  [pair(x_b, y_b), pair(x'_1, y_b), ...]     rows: samples with negative images
    batch_table  (B_c, B_c)      pair(x_i, y_j) over samples with captions  (in-batch negatives)
    rec_pairs    (R,)            pair(x_b, phrase_b) for samples with boxes (shared with the positive pair when the
                                 phrase is the caption)

A negative image of sample b is scored with b's timestep and noise, so each row compares like with like.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["Batch", "BatchBuilder", "check_item", "sample_index", "phrase_token_mask", "BOX_TOLERANCE"]

BOX_TOLERANCE = 1e-3  # how far (in image sizes) a box may extend beyond [0, 1] before it is rejected
_RANDOM_TRIES = 20  # draws per missing random negative before giving up (datasets of near-identical captions)


# ---- items --------------------------------------------------------------------------------------------------


def _where(index: int, key: str) -> str:
    return f"dataset item {index} `{key}`"


def _check_image(image, where: str) -> None:
    if isinstance(image, PIL.Image.Image):
        return
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.is_floating_point():
        if image.numel() and (image.min() < 0 or image.max() > 1):
            raise ValueError(
                f"{where} is a tensor with values in [{float(image.min()):.3g}, {float(image.max()):.3g}]; pass "
                "images in [0, 1] (e.g. uint8 / 255)."
            )
        return
    found = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
    raise ValueError(f"{where} is {found}; pass a PIL image or a (3, H, W) float tensor in [0, 1].")


def _check_boxes(boxes, index: int) -> torch.Tensor:
    where = _where(index, "boxes")
    try:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{where} is {boxes!r}; pass an (n, 4) tensor of (cx, cy, w, h) in [0, 1].") from None
    shown = [[round(v, 4) for v in box] for box in boxes.tolist()]
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{where} has non-finite values {shown}; pass finite (cx, cy, w, h).")
    cx, cy, w, h = boxes.unbind(-1)
    if (w <= 0).any() or (h <= 0).any():
        raise ValueError(f"{where} is {shown}; every box needs w > 0 and h > 0 ((cx, cy, w, h) format).")
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    outside = (x0 < -BOX_TOLERANCE) | (y0 < -BOX_TOLERANCE) | (x1 > 1 + BOX_TOLERANCE) | (y1 > 1 + BOX_TOLERANCE)
    if outside.any():
        bad = boxes[outside][0].tolist()
        raise ValueError(
            f"{where} has box {[round(v, 4) for v in bad]} (cx, cy, w, h) extending outside the image: boxes are "
            "normalised by the image width and height, so each corner must lie in [0, 1]; convert pixel boxes with "
            "discadapt.data.normalize_box."
        )
    return boxes


def _check_spans(spans, phrase: str, n: int, index: int) -> list[list[tuple[int, int]]]:
    where = _where(index, "box_spans")
    if spans is None:
        return [[(0, len(phrase))] for _ in range(n)]
    if not isinstance(spans, (list, tuple)) or len(spans) != n:
        raise ValueError(f"{where} is {spans!r}; pass one list of (start, end) character spans per box ({n}).")
    checked = []
    for box_spans in spans:
        ok = isinstance(box_spans, (list, tuple)) and box_spans
        ok = ok and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, int) for v in s) for s in box_spans
        )
        if not ok or not all(0 <= s < e <= len(phrase) for s, e in box_spans):
            raise ValueError(
                f"{where} is {spans!r}; each box needs spans [start, end) with 0 <= start < end <= {len(phrase)} "
                "(the phrase's length)."
            )
        checked.append([(int(s), int(e)) for s, e in box_spans])
    return checked


def check_item(item, index: int) -> dict:
    """The item `dataset[index]` checked and completed (see the module docstring for the format).

    Returns:
        `dict` with every key: `image`, `caption` (str or None), `neg_captions` (list), `neg_images` (sequence),
        `phrase` (str or None), `boxes` (float tensor (n, 4), n = 0 without REC), `box_spans` (n lists),
        `category` (str or None).
    """
    if not isinstance(item, dict):
        raise ValueError(
            f"dataset item {index} is a {type(item).__name__}; items are dicts (format in discadapt.train.data)."
        )
    if "image" not in item:
        raise ValueError(f"dataset item {index} has no `image` (keys: {sorted(item)}); every item needs one.")
    _check_image(item["image"], _where(index, "image"))
    caption = item.get("caption")
    if caption is not None and (not isinstance(caption, str) or not caption.strip()):
        raise ValueError(f"{_where(index, 'caption')} is {caption!r}; pass a non-empty string.")
    negs = item.get("neg_captions") or []
    if not isinstance(negs, (list, tuple)) or not all(isinstance(c, str) for c in negs):
        raise ValueError(f"{_where(index, 'neg_captions')} is {negs!r}; pass a list of strings.")
    neg_images = item.get("neg_images")
    neg_images = [] if neg_images is None else neg_images
    if not isinstance(neg_images, Sequence):
        raise ValueError(f"{_where(index, 'neg_images')} is a {type(neg_images).__name__}; pass a sequence of images.")
    boxes = item.get("boxes")
    phrase = item.get("phrase", caption)
    if boxes is None:
        boxes = torch.zeros(0, 4)
    else:
        boxes = _check_boxes(boxes, index)
        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError(
                f"dataset item {index} has `boxes` but its `phrase` is {phrase!r}; pass the referring expression as "
                "`phrase` (or a `caption`)."
            )
    if caption is None and not len(boxes):
        raise ValueError(
            f"dataset item {index} has neither a `caption` (for ITM) nor `boxes` (for REC); keys: {sorted(item)}."
        )
    spans = _check_spans(item.get("box_spans"), phrase, len(boxes), index) if len(boxes) else []
    category = item.get("category")
    if category is not None and not isinstance(category, str):
        raise ValueError(f"{_where(index, 'category')} is {category!r}; pass a string or leave it out.")
    return {
        "image": item["image"],
        "caption": caption,
        "neg_captions": [c for c in negs if c != caption],
        "neg_images": neg_images,
        "phrase": phrase if len(boxes) else None,
        "boxes": boxes,
        "box_spans": spans,
        "category": category,
    }


def to_pixels(image, resolution: int, where: str) -> torch.Tensor:
    """`image` (PIL, or a (3, H, W) tensor in [0, 1]) as a float32 (3, resolution, resolution) tensor in [0, 1]."""
    _check_image(image, where)
    if isinstance(image, PIL.Image.Image):
        image = image.convert("RGB")
        if image.size != (resolution, resolution):
            image = image.resize((resolution, resolution), PIL.Image.BICUBIC)
        array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
    image = image.detach().float().cpu()
    if image.shape[-2:] != (resolution, resolution):
        image = F.interpolate(image[None], size=(resolution, resolution), mode="bilinear", antialias=True)[0]
        image = image.clamp(0, 1)
    return image


# ---- order ----------------------------------------------------------------------------------------------------


def sample_index(g: int, num_items: int, seed: int) -> int:
    """Dataset index of sample `g` of the global stream (seeded permutation per epoch)."""
    epoch, offset = divmod(g, num_items)
    return int(_permutation(num_items, seed, epoch)[offset])


_PERMUTATIONS: dict = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERMUTATIONS:
        if len(_PERMUTATIONS) > 4:
            _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng((seed, 1, epoch)).permutation(n)
    return _PERMUTATIONS[key]


def phrase_token_mask(tokenizer, phrase: str, box_spans, length: int) -> torch.Tensor:
    """`(n, length)` bool: the prompt tokens of each box's character spans of `phrase`.

    Token positions are found by tokenizing the text before and up to each span (CLIP's BPE works word by word,
    so spans on word boundaries map exactly); position 0 is the start token.
    """

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    mask = torch.zeros(len(box_spans), length, dtype=torch.bool)
    for k, spans in enumerate(box_spans):
        for start, end in spans:
            first, last = 1 + count(phrase[:start]), 1 + count(phrase[:end])
            mask[k, first : min(last, length - 1)] = True
        if not mask[k].any():
            raise ValueError(
                f"`phrase` {phrase!r}: the words of box {k} ({spans}) fall beyond the text encoder's {length} "
                "tokens; shorten the phrase."
            )
    return mask


# ---- batches ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Batch:
    """Pairs to score and loss tables of one micro-batch of B samples (see the module docstring).

    Attributes:
        images (`torch.Tensor` of shape `(N_img, 3, R, R)`): unique images in [0, 1]; the B positives first.
        texts (`list[str]`): unique texts.
        pairs (`torch.Tensor` of shape `(P, 3)`, long): (image, text, sample) of each pair to score.
        timesteps (`torch.Tensor` of shape `(B,)`, long): each sample's timestep.
        noise (`torch.Tensor` of shape `(B, C, h, w)`): each sample's noise.
        text_table, image_table (`torch.Tensor` of shape `(rows, 1 + k)`, long): pair indices, -1 pads.
        text_rows, image_rows (`torch.Tensor` of shape `(rows,)`, long): the sample of each row.
        batch_table (`torch.Tensor` of shape `(B_c, B_c)`, long, or None): in-batch pairs.
        batch_rows (`torch.Tensor` of shape `(B_c,)`, long): samples of the in-batch table.
        rec_pairs (`torch.Tensor` of shape `(R,)`, long): the pair of each REC sample.
        rec_rows (`torch.Tensor` of shape `(R,)`, long): the sample of each REC pair.
        rec_boxes (`list[torch.Tensor]`): R tensors (n, 4), cxcywh in [0, 1].
        rec_tokens (`list[torch.Tensor]`): R bool tensors (n, L), each box's phrase tokens.
        denoise_images, denoise_texts (`torch.Tensor` of shape `(B_c,)`, long): positive (image, caption) pairs.
        denoise_timesteps (`torch.Tensor` of shape `(B_c,)`, long), denoise_noise (`(B_c, C, h, w)`): their own
            timesteps (uniform over the whole schedule unless `denoise_timestep_range` narrows it) and noise.
        denoise_dropped (`torch.Tensor` of shape `(B_c,)`, bool): pairs whose text is the empty caption
            (`caption_dropout`); `denoise_texts` names "" for them.
        categories (`list`): each sample's category or None. samples (`list[int]`): stream positions g.
    """

    images: torch.Tensor
    texts: list[str]
    pairs: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    text_table: torch.Tensor
    text_rows: torch.Tensor
    image_table: torch.Tensor
    image_rows: torch.Tensor
    batch_table: torch.Tensor | None
    batch_rows: torch.Tensor
    rec_pairs: torch.Tensor
    rec_rows: torch.Tensor
    rec_boxes: list
    rec_tokens: list
    denoise_images: torch.Tensor
    denoise_texts: torch.Tensor
    denoise_timesteps: torch.Tensor
    denoise_noise: torch.Tensor
    denoise_dropped: torch.Tensor
    categories: list
    samples: list

    def to(self, device) -> Batch:
        """The batch with its tensors on `device`."""

        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, list):
                return [move(v) for v in value]
            return value

        return Batch(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


def _table(rows: list[list[int]], width: int) -> torch.Tensor:
    table = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        table[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return table


class _Pairs:
    """The unique images and texts of a micro-batch and the (image, text, sample) pairs to score, by first use."""

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.images: list[torch.Tensor] = []
        self.texts: dict[str, int] = {}
        self.pairs: dict[tuple[int, int, int], int] = {}

    def image(self, image, where: str) -> int:
        self.images.append(to_pixels(image, self.resolution, where))
        return len(self.images) - 1

    def text(self, text: str) -> int:
        return self.texts.setdefault(text, len(self.texts))

    def pair(self, image: int, text: int, sample: int) -> int:
        return self.pairs.setdefault((image, text, sample), len(self.pairs))

    def stacked_images(self) -> torch.Tensor:
        """`(N_img, 3, R, R)`."""
        if not self.images:
            return torch.zeros(0, 3, self.resolution, self.resolution)
        return torch.stack(self.images)


class BatchBuilder:
    """Builds the `Batch` of a list of stream positions (see the module docstring).

    Args:
        dataset: the map-style dataset of items.
        tokenizer: the pipeline's (first) tokenizer, for the REC token masks.
        latent_shape (`tuple[int, int, int]`): (C, h, w) of the UNet's latents at `resolution`.
        resolution (`int`): image side in pixels.
        num_train_timesteps (`int`): the scheduler's number of training timesteps T.
        seed (`int`): the run's seed.
        num_neg_captions, num_neg_images (`int`): k_t and k_i; `None` takes every hard negative (evaluation).
        random_negatives (`bool`): fill missing negatives with other items' captions and images.
        in_batch_negatives (`bool`): add the in-batch table.
        timesteps (`tuple[int, ...]` or None), timestep_range (`tuple[int, int]` or None): how timesteps are drawn.
        denoise_timestep_range (`tuple[int, int]` or None): [low, high) of the denoising pairs' timesteps (default
            the whole schedule).
        denoise (`bool`): draw the denoising pairs' timesteps and noise.
        caption_dropout (`float`): probability that a denoising pair's caption is replaced by "" (drawn after its
            timestep and noise, so that the other draws do not depend on it).
    """

    def __init__(
        self,
        dataset,
        tokenizer,
        latent_shape: tuple[int, int, int],
        resolution: int,
        num_train_timesteps: int,
        seed: int,
        num_neg_captions: int | None,
        num_neg_images: int | None,
        random_negatives: bool = True,
        in_batch_negatives: bool = False,
        timesteps: Sequence[int] | None = None,
        timestep_range: tuple[int, int] | None = None,
        denoise_timestep_range: tuple[int, int] | None = None,
        denoise: bool = False,
        stream: int = 2,
        caption_dropout: float = 0.0,
    ):
        self.dataset, self.tokenizer = dataset, tokenizer
        self.latent_shape, self.resolution = tuple(latent_shape), resolution
        self.num_train_timesteps, self.seed = num_train_timesteps, seed
        self.num_neg_captions, self.num_neg_images = num_neg_captions, num_neg_images
        self.random_negatives, self.in_batch_negatives = random_negatives, in_batch_negatives
        self.timesteps = None if timesteps is None else [int(t) for t in timesteps]
        whole = (0, num_train_timesteps)
        self.timestep_range = tuple(timestep_range) if timestep_range is not None else whole
        self.denoise_timestep_range = tuple(denoise_timestep_range) if denoise_timestep_range is not None else whole
        self.denoise, self.stream, self.caption_dropout = denoise, stream, caption_dropout
        self.length = len(tokenizer("", padding="max_length", max_length=tokenizer.model_max_length).input_ids)

    # randomness of one sample ---------------------------------------------------------------------------------
    def _rng(self, g: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.stream, g))

    def _timestep(self, rng: np.random.Generator) -> int:
        if self.timesteps is not None:
            return self.timesteps[int(rng.integers(len(self.timesteps)))]
        return int(rng.integers(*self.timestep_range))

    def _noise(self, rng: np.random.Generator) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        return torch.randn(self.latent_shape, generator=generator)

    def _pick(self, values: Sequence, k: int | None, rng: np.random.Generator) -> list:
        """`k` of `values` (all when k is None or there are at most k), in a seeded random choice."""
        if k is None or len(values) <= k:
            return list(values)
        return [values[int(i)] for i in sorted(rng.choice(len(values), size=k, replace=False))]

    def _random_items(self, index: int, exclude: set, count: int, rng: np.random.Generator) -> list[dict]:
        """Up to `count` other items whose caption (or phrase) is not in `exclude` (the caption, its negatives)."""
        found: list[dict] = []
        n = len(self.dataset)
        for _ in range(_RANDOM_TRIES * count):
            if len(found) == count or n < 2:
                break
            j = int(rng.integers(n - 1))
            j += j >= index  # any index but `index`
            other = check_item(self.dataset[j], j)
            text = other["caption"] or other["phrase"]
            if text not in exclude:
                found.append(other)
                exclude = exclude | {text}
        return found

    # one micro-batch ------------------------------------------------------------------------------------------
    def __call__(self, samples: Sequence[int]) -> Batch:
        """The batch of stream positions `samples` (their dataset indices from `sample_index`)."""
        n_items = len(self.dataset)
        return self.build([(g, sample_index(g, n_items, self.seed)) for g in samples])

    def _negatives(self, index: int, item: dict, rng: np.random.Generator) -> tuple[list[str], list]:
        """Negative captions and images of a captioned item: hard ones (a seeded choice when there are more than
        needed), then random other items' captions and images to fill the missing ones."""
        caption = item["caption"]
        neg_captions = self._pick(item["neg_captions"], self.num_neg_captions, rng)
        neg_images = self._pick(range(len(item["neg_images"])), self.num_neg_images, rng)
        neg_images = [item["neg_images"][i] for i in neg_images]
        missing_t = 0 if self.num_neg_captions is None else self.num_neg_captions - len(neg_captions)
        missing_i = 0 if self.num_neg_images is None else self.num_neg_images - len(neg_images)
        if self.random_negatives and max(missing_t, missing_i) > 0:
            others = self._random_items(index, {caption, *neg_captions}, max(missing_t, missing_i), rng)
            neg_captions += [o["caption"] or o["phrase"] for o in others[:missing_t]]
            neg_images += [o["image"] for o in others[:missing_i]]
        return neg_captions, neg_images

    def _tables(self, items: list, rngs: list, pairs: _Pairs) -> dict:
        """The rows of the ITM tables and the REC pairs of the samples (their positive images are 0..B-1)."""
        t = {k: [] for k in ("text_rows", "image_rows", "text", "image", "captioned")}
        t.update({k: [] for k in ("rec_pairs", "rec_rows", "rec_boxes", "rec_tokens")})
        for b, ((index, item), rng) in enumerate(zip(items, rngs)):
            caption = item["caption"]
            if caption is not None:
                t["captioned"].append(b)
                positive = pairs.pair(b, pairs.text(caption), b)
                neg_captions, neg_images = self._negatives(index, item, rng)
                if neg_captions:
                    t["text_rows"].append(b)
                    t["text"].append([positive] + [pairs.pair(b, pairs.text(c), b) for c in neg_captions])
                if neg_images:
                    where = _where(index, "neg_images")
                    t["image_rows"].append(b)
                    t["image"].append(
                        [positive] + [pairs.pair(pairs.image(x, where), pairs.text(caption), b) for x in neg_images]
                    )
            if len(item["boxes"]):
                t["rec_rows"].append(b)
                t["rec_pairs"].append(pairs.pair(b, pairs.text(item["phrase"]), b))
                t["rec_boxes"].append(item["boxes"])
                t["rec_tokens"].append(
                    phrase_token_mask(self.tokenizer, item["phrase"], item["box_spans"], self.length)
                )
        return t

    def _denoise_draws(self, samples: Sequence[tuple[int, int]], captioned: list[int]):
        """Timesteps `(B_c,)`, uniform in `denoise_timestep_range`, noise `(B_c, C, h, w)` and which captions are
        dropped `(B_c,)`, of the denoising pairs, from their own generators (none drawn without `denoise`)."""
        if not (self.denoise and captioned):
            none_dropped = torch.zeros(len(captioned), dtype=torch.bool)
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, *self.latent_shape), none_dropped
        rngs = [np.random.default_rng((self.seed, self.stream, samples[b][0], 1)) for b in captioned]
        timesteps = torch.tensor([int(r.integers(*self.denoise_timestep_range)) for r in rngs], dtype=torch.long)
        noise = torch.stack([self._noise(r) for r in rngs])
        dropped = [bool(self.caption_dropout and r.random() < self.caption_dropout) for r in rngs]
        return timesteps, noise, torch.tensor(dropped, dtype=torch.bool)

    def build(self, samples: Sequence[tuple[int, int]]) -> Batch:
        """The batch of `(g, dataset index)` samples."""
        pairs = _Pairs(self.resolution)
        items, rngs = [], []
        for g, index in samples:
            item = check_item(self.dataset[index], index)
            items.append((index, item))
            rngs.append(self._rng(g))
            pairs.image(item["image"], _where(index, "image"))  # positives are images 0..B-1
        timesteps = torch.tensor([self._timestep(rng) for rng in rngs], dtype=torch.long)
        noise = torch.stack([self._noise(rng) for rng in rngs]) if rngs else torch.zeros(0, *self.latent_shape)
        t = self._tables(items, rngs, pairs)
        captioned = t["captioned"]
        batch_table = None
        if self.in_batch_negatives and len(captioned) >= 2:
            ids = [pairs.text(items[j][1]["caption"]) for j in captioned]
            batch_table = torch.tensor([[pairs.pair(i, k, i) for k in ids] for i in captioned], dtype=torch.long)
        denoise_timesteps, denoise_noise, dropped = self._denoise_draws(samples, captioned)
        denoise_texts = [pairs.text("" if d else items[b][1]["caption"]) for b, d in zip(captioned, dropped.tolist())]
        return Batch(
            images=pairs.stacked_images(),
            texts=list(pairs.texts),
            pairs=torch.tensor(list(pairs.pairs), dtype=torch.long).reshape(-1, 3),
            timesteps=timesteps,
            noise=noise,
            text_table=_table(t["text"], max((len(r) for r in t["text"]), default=1)),
            text_rows=torch.tensor(t["text_rows"], dtype=torch.long),
            image_table=_table(t["image"], max((len(r) for r in t["image"]), default=1)),
            image_rows=torch.tensor(t["image_rows"], dtype=torch.long),
            batch_table=batch_table,
            batch_rows=torch.tensor(captioned if batch_table is not None else [], dtype=torch.long),
            rec_pairs=torch.tensor(t["rec_pairs"], dtype=torch.long),
            rec_rows=torch.tensor(t["rec_rows"], dtype=torch.long),
            rec_boxes=t["rec_boxes"],
            rec_tokens=t["rec_tokens"],
            denoise_images=torch.tensor(captioned, dtype=torch.long),
            denoise_texts=torch.tensor(denoise_texts, dtype=torch.long),
            denoise_timesteps=denoise_timesteps,
            denoise_noise=denoise_noise,
            denoise_dropped=dropped,
            categories=[item["category"] for _, item in items],
            samples=[g for g, _ in samples],
        )


class MicroBatches(Dataset):
    """Micro-batch `m` (from `first` on) of process `rank`: a `Batch`, for a `DataLoader(batch_size=None)`.

    Micro-batch m of the run covers stream positions `[m * B * P, (m + 1) * B * P)`; process `rank` takes the
    slice `[rank * B, (rank + 1) * B)` of it.
    """

    def __init__(self, builder: BatchBuilder, batch_size: int, num_processes: int, rank: int, first: int, count: int):
        self.builder, self.batch_size, self.num_processes, self.rank = builder, batch_size, num_processes, rank
        self.first, self.count = first, count

    def __len__(self) -> int:
        return self.count

    def samples(self, i: int) -> range:
        start = (self.first + i) * self.batch_size * self.num_processes + self.rank * self.batch_size
        return range(start, start + self.batch_size)

    def __getitem__(self, i: int) -> Batch:
        return self.builder(list(self.samples(i)))
