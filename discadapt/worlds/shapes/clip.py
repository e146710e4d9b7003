"""The shapes world's own CLIP: a small `transformers.CLIPModel` (text and image towers) trained contrastively on
the world's scenes with its hard negatives, a referee of color, shape, binding, count and spatial relations.

Model (`WorldClipSizes()`, the defaults): text transformer over the real 49,408-token CLIP vocabulary (bos 49406,
eos = pad 49407, 77 positions, `discadapt.clip_tokenizer`), hidden 64, 2 layers, 4 heads; vision transformer on
32 x 32 images, 4 x 4 patches (64 patches + CLS), hidden 96, 3 layers, 4 heads; both projected to 64 dimensions.
Parameter counts are in `WorldClipSizes`' docstring; most of the text tower is its token embedding (a lookup).

Images: `preprocess` maps uint8 `(N, S, S, 3)` to float `(N, 3, S, S)` in [-1, 1] (`x / 127.5 - 1`), everywhere.
Texts: `tokenize` pads with the eos token to the longest caption of the batch; with CLIP's causal attention and
pooling at the first eos token this gives the same embedding as padding to 77.

`train_world_clip(out_dir, ...)`:

1. Data: every step draws a fresh batch of "train" examples (`make_example`), categories drawn with
   `category_weights`, seeded by `(seed, 201, step, i)`, so a resumed run sees exactly the batches of an
   uninterrupted one. Each example brings its caption and up to `negatives` of its hard negatives.
2. Loss (`world_clip_loss`): CLIP's symmetric in-batch InfoNCE plus `hard_negative_weight` times a hard-negative
   term: for each image, a softmax over its caption, its own hard negatives and the other captions of the batch.
   In-batch captions that may be true of an image (`semantics.evaluate` with margin `-SAFETY_MARGIN`, the relaxed
   test the negatives are built with) are left out of its softmaxes instead of being pushed away.
3. AdamW, linear warmup then cosine decay to 0, gradient clipping at `GRAD_CLIP`; the learned logit scale is
   clamped to [0, log 100] as in CLIP. No weight decay on biases, norms and the logit scale; the text token
   embedding has its own group without weight decay, so rows of tokens no caption uses keep their seeded initial
   values exactly (zero gradient, zero Adam update).
4. Checkpoints every `checkpoint_every` steps, at a stop (`stop_after`) and at the end: model, optimizer and step,
   written to a temporary folder then renamed (`os.replace`) to `checkpoints/step-NNNNNNN`, the newest
   `KEEP_CHECKPOINTS` kept. Calling `train_world_clip` again on the same `out_dir` resumes from the newest
   checkpoint and ends with the same weights as an uninterrupted run; a different configuration raises a
   ValueError naming the fields and writes nothing.
5. The end: `out_dir/model`, a `CLIPModel` saved with `save_pretrained` (safetensors); `load_world_clip(out_dir)`.

Scoring: `clip_scores(model, images, texts)` (pairwise, logit scale times cosine), `clip_logits(model, images,
texts_per_image)` (multiple choice), `evaluate_world_clip(model, ...)` (accuracy per category, against hard
negatives and against other images).

Example:
    >>> from discadapt.worlds.shapes import make_dataset, render
    >>> from discadapt.worlds.shapes.clip import WorldClipSizes, clip_logits, make_world_clip
    >>> model = make_world_clip(WorldClipSizes.tiny(), seed=0)
    >>> example = make_dataset(1, split="test_id", image_size=32)[0]
    >>> choices = [example.caption.text] + [n.caption.text for n in example.negatives]
    >>> clip_logits(model, render(example.scene)[None], [choices]).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

from ...tokenizer import clip_tokenizer
from . import runs
from .captions import CATEGORIES
from .dataset import check_category_weights, draw_categories, make_dataset, make_example
from .models import CLIP_EOS, MAX_POSITIONS, _seeded, count_parameters, text_encoder_config
from .negatives import KINDS
from .palette import check_choice, check_image_size
from .render import render
from .semantics import SAFETY_MARGIN, evaluate
from .splits import SPLITS

__all__ = [
    "WorldClipConfig",
    "WorldClipSizes",
    "clip_logits",
    "clip_scores",
    "encode_images",
    "encode_texts",
    "evaluate_world_clip",
    "load_checkpoint",
    "load_world_clip",
    "make_world_clip",
    "preprocess",
    "tokenize",
    "train_world_clip",
    "world_clip_config",
    "world_clip_loss",
]

# ---- Defaults, in one place. They reproduce the reference run: 6000 steps in 1043 s on 1 shared CPU thread
# (0.17 s/step). Multiple choice against hard negatives, 200 examples per category, test_id / test_ood: single
# 0.87 / 0.55, two_objects 0.81 / 0.54, counting 0.67 / 0.49, spatial 0.38 / 0.27, referring 0.74 / 0.54. Relations
# are not learned (swap_relation 0.53, chance): texts differing only in the relation word embed at cosine 0.9997.
STEPS = 6000
BATCH_SIZE = 32
LR = 2e-3
WEIGHT_DECAY = 0.1
WARMUP_STEPS = 150
NEGATIVES = 4  # hard negatives per example: all of them (the dataset makes 1 to 4)
TEMPERATURE = 0.07  # initial temperature: logit scale log(1 / 0.07), as CLIP
HARD_NEGATIVE_WEIGHT = 1.0
GRAD_CLIP = 1.0
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp of the learned logit scale
CHECKPOINT_EVERY = 250
KEEP_CHECKPOINTS = 2
# Weighted towards the categories whose negatives need binding, counting and relations.
CATEGORY_WEIGHTS = {"single": 0.1, "two_objects": 0.2, "counting": 0.25, "spatial": 0.25, "referring": 0.2}

_PHASE_SEED = 201  # data stream of this trainer (train.py uses 101-103)
_EVAL_BATCH = 256


def _check_int(name: str, value, minimum: int):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` is {value!r}; pass an int >= {minimum}.")


@dataclass(frozen=True)
class WorldClipSizes:
    """Widths and depths of the two towers.

    Parameter counts (`count_parameters`): the defaults 3,624,225, 3,162,112 of them the text token embedding
    (49,408 x 64); `tiny()` 1,617,889, 1,581,056 of them the token embedding.

    Args:
        image_size (int): image side in pixels, >= 32, a multiple of `patch_size`. Default 32.
        patch_size (int): side of the vision transformer's square patches. Default 4.
        text_hidden (int): text transformer width. Default 64.
        text_layers (int): text transformer layers. Default 2.
        text_heads (int): text attention heads (must divide `text_hidden`). Default 4.
        vision_hidden (int): vision transformer width. Default 96.
        vision_layers (int): vision transformer layers. Default 3.
        vision_heads (int): vision attention heads (must divide `vision_hidden`). Default 4.
        projection_dim (int): width of the shared embedding space. Default 64.
    """

    image_size: int = 32
    patch_size: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    projection_dim: int = 64

    def __post_init__(self):
        check_image_size(self.image_size)
        for f in fields(self):
            _check_int(f.name, getattr(self, f.name), 1)
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`patch_size` is {self.patch_size}, which does not divide `image_size` {self.image_size}; pass a "
                "divisor such as 4."
            )
        for tower in ("text", "vision"):
            hidden, heads = getattr(self, f"{tower}_hidden"), getattr(self, f"{tower}_heads")
            if hidden % heads:
                raise ValueError(
                    f"`{tower}_hidden` {hidden} is not a multiple of `{tower}_heads` {heads}; pass heads dividing it."
                )

    @classmethod
    def tiny(cls) -> WorldClipSizes:
        """Smallest sizes that run the whole path (tests)."""
        return cls(
            patch_size=8,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            vision_hidden=32,
            vision_layers=1,
            vision_heads=2,
            projection_dim=32,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WorldClipConfig:
    """Everything that determines the trained weights (a resumed run must match it field for field).

    Args:
        seed (int): seed of initialisation and data, >= 0. Default 0.
        steps (int): optimisation steps, >= 1. Default `STEPS`.
        batch_size (int): examples (images, true captions) per step, >= 2. Default `BATCH_SIZE`.
        lr (float): peak AdamW learning rate, > 0. Default `LR`.
        weight_decay (float): AdamW weight decay of matrices (not of the token embedding), >= 0.
            Default `WEIGHT_DECAY`.
        warmup_steps (int): linear warmup before the cosine decay, >= 0. Default `WARMUP_STEPS`.
        negatives (int): hard negatives per example, 0 to `len(KINDS)` (6; an example has at most one per kind, 1 to 4);
            where an example has more, a seeded subset. Default `NEGATIVES`.
        temperature (float): initial softmax temperature, in (0, 1]: logit scale `log(1 / temperature)`.
            Default `TEMPERATURE`.
        hard_negative_weight (float): weight of the hard-negative term, >= 0. Default `HARD_NEGATIVE_WEIGHT`.
        checkpoint_every (int): steps between checkpoints, >= 1. Default `CHECKPOINT_EVERY`.
        category_weights (dict[str, float]): sampling weights of the caption categories. Default
            `CATEGORY_WEIGHTS`.
        sizes (WorldClipSizes): model sizes. Default `WorldClipSizes()`.
    """

    seed: int = 0
    steps: int = STEPS
    batch_size: int = BATCH_SIZE
    lr: float = LR
    weight_decay: float = WEIGHT_DECAY
    warmup_steps: int = WARMUP_STEPS
    negatives: int = NEGATIVES
    temperature: float = TEMPERATURE
    hard_negative_weight: float = HARD_NEGATIVE_WEIGHT
    checkpoint_every: int = CHECKPOINT_EVERY
    category_weights: dict = field(default_factory=lambda: dict(CATEGORY_WEIGHTS))
    sizes: WorldClipSizes = field(default_factory=WorldClipSizes)

    def __post_init__(self):
        _check_int("seed", self.seed, 0)
        _check_int("steps", self.steps, 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(
                f"`batch_size` is {self.batch_size!r}; pass an int >= 2 (the contrastive loss needs other examples "
                "in the batch)."
            )
        if (
            isinstance(self.negatives, bool)
            or not isinstance(self.negatives, int)
            or not 0 <= self.negatives <= len(KINDS)
        ):
            raise ValueError(f"`negatives` is {self.negatives!r}; pass an int from 0 to {len(KINDS)}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"`lr` is {self.lr!r}; pass a float > 0.")
        for name in ("weight_decay", "hard_negative_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"`{name}` is {value!r}; pass a float >= 0.")
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 1):
            raise ValueError(f"`temperature` is {self.temperature!r}; pass a float in (0, 1], e.g. 0.07.")
        check_category_weights(self.category_weights)
        if not isinstance(self.sizes, WorldClipSizes):
            raise ValueError(f"`sizes` is {self.sizes!r}; pass a WorldClipSizes.")

    def to_dict(self) -> dict:
        """JSON-ready dict (the sizes flattened as `sizes.<field>`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sizes"}
        d.update({f"sizes.{k}": v for k, v in self.sizes.to_dict().items()})
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, data: dict) -> WorldClipConfig:
        """Inverse of `to_dict`."""
        sizes = {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith("sizes.")}
        rest = {k: v for k, v in data.items() if not k.startswith("sizes.")}
        return cls(**rest, sizes=WorldClipSizes(**sizes))


# ---- Model ------------------------------------------------------------------------------------------------------


def _sizes_of(sizes) -> WorldClipSizes:
    if sizes is None:
        return WorldClipSizes()
    if isinstance(sizes, WorldClipConfig):
        return sizes.sizes
    if not isinstance(sizes, WorldClipSizes):
        raise ValueError(f"`sizes` is {sizes!r}; pass a WorldClipSizes or a WorldClipConfig.")
    return sizes


def world_clip_config(sizes: WorldClipSizes | WorldClipConfig | None = None, temperature: float = TEMPERATURE):
    """The `transformers.CLIPConfig` of `sizes`: the real CLIP vocabulary and 77 positions, no dropout.

    Args:
        sizes (WorldClipSizes | WorldClipConfig | None): sizes, or a config whose sizes (and temperature) to use;
            None means `WorldClipSizes()`. Default None.
        temperature (float): initial temperature (ignored when `sizes` is a WorldClipConfig). Default 0.07.
    """
    if isinstance(sizes, WorldClipConfig):
        temperature = sizes.temperature
    s = _sizes_of(sizes)
    text = text_encoder_config(s, projection_dim=s.projection_dim)
    vision = CLIPVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=4 * s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
        num_channels=3,
        projection_dim=s.projection_dim,
    )
    return CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=s.projection_dim,
        logit_scale_init_value=math.log(1.0 / temperature),
    )


def make_world_clip(sizes: WorldClipSizes | WorldClipConfig | None = None, seed: int = 0) -> CLIPModel:
    """A freshly initialised world CLIP (same sizes and `seed`, same weights; the global RNG is left alone).

    Args:
        sizes (WorldClipSizes | WorldClipConfig | None): see `world_clip_config`. Default None (`WorldClipSizes()`).
        seed (int): initialisation seed. Default 0.

    Example:
        >>> model = make_world_clip(WorldClipSizes.tiny(), seed=0)
        >>> model.config.vision_config.image_size, model.config.text_config.vocab_size
        (32, 49408)
    """
    _check_int("seed", seed, 0)
    config = world_clip_config(sizes)
    return _seeded(seed, lambda: CLIPModel(config)).eval()


def _token_embedding(model: CLIPModel) -> torch.nn.Parameter:
    return model.text_model.embeddings.token_embedding.weight


# ---- Inputs -----------------------------------------------------------------------------------------------------


def preprocess(images) -> torch.Tensor:
    """uint8 images to the model's input: float32 `(N, 3, S, S)` in [-1, 1] (`x / 127.5 - 1`).

    Args:
        images (np.ndarray | torch.Tensor | Sequence[np.ndarray]): uint8 `(N, S, S, 3)`, e.g. `render` outputs
            stacked, or a list of `(S, S, 3)` images.

    Example:
        >>> preprocess(np.zeros((2, 32, 32, 3), np.uint8)).shape
        torch.Size([2, 3, 32, 32])
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("`images` is empty; pass one or more uint8 (S, S, 3) images.")
        images = np.stack([np.asarray(i) for i in images])
    ok = (isinstance(images, np.ndarray) and images.dtype == np.uint8) or (
        isinstance(images, torch.Tensor) and images.dtype == torch.uint8
    )
    if not ok or images.ndim != 4 or images.shape[3] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        dtype = str(getattr(images, "dtype", None)).removeprefix("torch.")
        raise ValueError(
            f"`images` has shape {shape} and dtype {dtype}; pass uint8 images of shape (N, S, S, 3), e.g. "
            "np.stack([render(scene) for scene in scenes])."
        )
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, S, S)


@functools.lru_cache(maxsize=1)
def _tokenizer():
    return clip_tokenizer()


@functools.lru_cache(maxsize=65536)
def _ids(text: str) -> tuple[int, ...]:
    return tuple(_tokenizer()(text, truncation=True, max_length=MAX_POSITIONS).input_ids)


def tokenize(texts: Sequence[str]) -> torch.Tensor:
    """CLIP token ids `(N, L)`: bos, tokens, eos, padded with eos (= pad) to the longest text, L <= 77.

    Example:
        >>> tokenize(["a red circle", "two red circles"]).tolist()
        [[49406, 320, 736, 7117, 49407], [49406, 1237, 736, 19411, 49407]]
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not len(texts):
        raise ValueError(f"`texts` is {texts!r}; pass a non-empty list of caption strings.")
    ids = [_ids(t) for t in texts]
    longest = max(len(i) for i in ids)
    return torch.tensor([list(i) + [CLIP_EOS] * (longest - len(i)) for i in ids])  # (N, L)


def _device(model: CLIPModel) -> torch.device:
    return next(model.parameters()).device


def encode_images(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings `(N, P)` (not normalised) of preprocessed `pixels` `(N, 3, S, S)`."""
    pooled = model.vision_model(pixel_values=pixels.to(_device(model))).pooler_output  # (N, vision_hidden)
    return model.visual_projection(pooled)  # (N, P)


def encode_texts(model: CLIPModel, texts: Sequence[str]) -> torch.Tensor:
    """Projected text embeddings `(N, P)` (not normalised) of caption strings."""
    pooled = model.text_model(input_ids=tokenize(texts).to(_device(model))).pooler_output  # (N, text_hidden)
    return model.text_projection(pooled)  # (N, P)


def _logit_scale(model: CLIPModel) -> torch.Tensor:
    return model.logit_scale.clamp(0, MAX_LOGIT_SCALE).exp()


# ---- Scores -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def clip_scores(model: CLIPModel, images, texts: Sequence[str], batch_size: int = _EVAL_BATCH) -> torch.Tensor:
    """Pairwise scores: logit scale times the cosine similarity of `images[i]` and `texts[i]`.

    Args:
        model (CLIPModel): a world CLIP (`make_world_clip`, `load_world_clip`).
        images: uint8 `(N, S, S, 3)` (see `preprocess`).
        texts (Sequence[str]): N captions.
        batch_size (int): images per forward pass. Default 256.

    Returns:
        torch.Tensor: float `(N,)` on the CPU.

    Example:
        >>> clip_scores(model, np.stack([render(e.scene) for e in examples]), [e.caption.text for e in examples])
        ... # doctest: +SKIP
    """
    pixels = preprocess(images)  # (N, 3, S, S)
    if isinstance(texts, str) or len(texts) != len(pixels):
        raise ValueError(f"`texts` is {texts!r}; pass a list of one caption string per image ({len(pixels)}).")
    texts = list(texts)
    _check_int("batch_size", batch_size, 1)
    model = model.eval()
    scale, out = _logit_scale(model), []
    for start in range(0, len(pixels), batch_size):
        image = F.normalize(encode_images(model, pixels[start : start + batch_size]), dim=-1)  # (n, P)
        text = F.normalize(encode_texts(model, texts[start : start + batch_size]), dim=-1)  # (n, P)
        out.append(scale * (image * text).sum(-1))
    return torch.cat(out).float().cpu()


@torch.no_grad()
def clip_logits(
    model: CLIPModel, images, texts_per_image: Sequence[Sequence[str]], batch_size: int = _EVAL_BATCH
) -> torch.Tensor:
    """Multiple choice: the score of each image against each of its own candidate captions.

    Args:
        model (CLIPModel): a world CLIP.
        images: uint8 `(N, S, S, 3)` (see `preprocess`).
        texts_per_image (Sequence[Sequence[str]]): N lists of candidate captions (lengths may differ).
        batch_size (int): images per forward pass. Default 256.

    Returns:
        torch.Tensor: float `(N, K)` on the CPU, K the longest list; entry (i, k) is `clip_scores` of image i and
        its caption k, and -inf where image i has fewer than k + 1 candidates.

    Example:
        >>> logits = clip_logits(model, images, [[e.caption.text] + [n.caption.text for n in e.negatives]
        ...                                      for e in examples])  # doctest: +SKIP
        >>> correct = logits[:, 0] > logits[:, 1:].max(dim=1).values  # doctest: +SKIP
    """
    pixels = preprocess(images)  # (N, 3, S, S)
    if isinstance(texts_per_image, str) or len(texts_per_image) != len(pixels):
        raise ValueError(
            f"`texts_per_image` has {len(texts_per_image)} entries for {len(pixels)} images; pass one list of "
            "candidate captions per image."
        )
    for i, choices in enumerate(texts_per_image):
        if isinstance(choices, str) or not len(choices):
            raise ValueError(f"`texts_per_image[{i}]` is {choices!r}; pass a non-empty list of caption strings.")
    _check_int("batch_size", batch_size, 1)
    model = model.eval()
    scale = _logit_scale(model)
    width = max(len(c) for c in texts_per_image)
    logits = torch.full((len(pixels), width), float("-inf"))
    for start in range(0, len(pixels), batch_size):
        chunk = texts_per_image[start : start + batch_size]
        image = F.normalize(encode_images(model, pixels[start : start + batch_size]), dim=-1)  # (n, P)
        flat = [t for choices in chunk for t in choices]
        owner = torch.tensor([i for i, choices in enumerate(chunk) for _ in choices])  # (m,)
        column = torch.tensor([k for choices in chunk for k in range(len(choices))])  # (m,)
        text = F.normalize(encode_texts(model, flat), dim=-1)  # (m, P)
        values = scale * (image[owner.to(image.device)] * text).sum(-1)  # (m,)
        logits[start + owner, column] = values.float().cpu()
    return logits


# ---- Loss -------------------------------------------------------------------------------------------------------


def world_clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    negative_embeds: torch.Tensor,
    negative_owner: torch.Tensor,
    logit_scale: torch.Tensor,
    valid: torch.Tensor | None = None,
    hard_negative_weight: float = HARD_NEGATIVE_WEIGHT,
) -> dict[str, torch.Tensor]:
    """CLIP's symmetric in-batch InfoNCE plus a hard-negative term (embeddings are normalised here).

    With s_ij = `logit_scale` * cos(image i, caption j) and h_ik = `logit_scale` * cos(image i, negative k):

    - contrastive = (CE_i over j of s_ij, target i  +  CE_j over i of s_ij, target j) / 2, averaged over the batch;
    - hard = CE over [s_ii, h_ik for the negatives k of image i, s_ij for j != i], target s_ii, averaged over images;
    - loss = contrastive + `hard_negative_weight` * hard.

    Pairs (i, j), i != j, with `valid[i, j]` False (caption j may be true of image i) are left out of both terms.

    Args:
        image_embeds (torch.Tensor): `(B, P)` image embeddings.
        text_embeds (torch.Tensor): `(B, P)` embeddings of the true captions, row i of image i.
        negative_embeds (torch.Tensor): `(M, P)` embeddings of hard negatives (M may be 0).
        negative_owner (torch.Tensor): long `(M,)`, the image (0..B-1) each negative belongs to.
        logit_scale (torch.Tensor): scalar multiplier of the cosines (the exponentiated learned scale).
        valid (torch.Tensor | None): bool `(B, B)`; None keeps all pairs. The diagonal is ignored. Default None.
        hard_negative_weight (float): weight of the hard term. Default 1.0.

    Returns:
        dict[str, torch.Tensor]: scalars `loss`, `contrastive`, `hard`.

    Example:
        >>> image, text, neg = torch.randn(3, 8), torch.randn(3, 8), torch.randn(2, 8)
        >>> out = world_clip_loss(image, text, neg, torch.tensor([0, 2]), torch.tensor(10.0))
        >>> sorted(out)
        ['contrastive', 'hard', 'loss']
    """
    b = len(image_embeds)
    if text_embeds.shape != image_embeds.shape or image_embeds.ndim != 2 or b < 2:
        raise ValueError(
            f"`image_embeds` {tuple(image_embeds.shape)} and `text_embeds` {tuple(text_embeds.shape)}; pass two "
            "(B, P) tensors, B >= 2."
        )
    if negative_embeds.ndim != 2 or negative_embeds.shape[1] != image_embeds.shape[1]:
        raise ValueError(
            f"`negative_embeds` has shape {tuple(negative_embeds.shape)}; pass (M, {image_embeds.shape[1]})."
        )
    if negative_owner.shape != (len(negative_embeds),) or (
        len(negative_owner) and not (0 <= int(negative_owner.min()) and int(negative_owner.max()) < b)
    ):
        raise ValueError(
            f"`negative_owner` is {negative_owner.tolist()}; pass one image index in 0..{b - 1} per negative."
        )
    device = image_embeds.device
    if valid is None:
        keep = torch.ones(b, b, dtype=torch.bool, device=device)
    elif valid.shape != (b, b):
        raise ValueError(f"`valid` has shape {tuple(valid.shape)}; pass a bool ({b}, {b}) mask or None.")
    else:
        keep = valid.to(device=device, dtype=torch.bool) | torch.eye(b, dtype=torch.bool, device=device)  # (B, B)
    image = F.normalize(image_embeds, dim=-1)  # (B, P)
    texts = F.normalize(torch.cat([text_embeds, negative_embeds]), dim=-1)  # (B + M, P)
    logits = logit_scale * image @ texts.T  # (B, B + M)
    target = torch.arange(b, device=device)
    pairs = logits[:, :b].masked_fill(~keep, float("-inf"))  # (B, B)
    contrastive = (F.cross_entropy(pairs, target) + F.cross_entropy(pairs.T, target)) / 2
    own = negative_owner.to(device)[None, :] == target[:, None]  # (B, M)
    hard = F.cross_entropy(logits.masked_fill(~torch.cat([keep, own], dim=1), float("-inf")), target)
    return {"loss": contrastive + hard_negative_weight * hard, "contrastive": contrastive, "hard": hard}


# ---- Training ---------------------------------------------------------------------------------------------------


def _examples(config: WorldClipConfig, step: int):
    """The examples of `step` and, per example, the indices of the hard negatives it brings."""
    rng = np.random.default_rng((config.seed, _PHASE_SEED, step))
    cats = draw_categories(rng, config.category_weights, config.batch_size)
    examples = [
        make_example((config.seed, _PHASE_SEED, step, i), c, "train", image_size=config.sizes.image_size)
        for i, c in enumerate(cats)
    ]
    chosen = []
    for e in examples:
        k = len(e.negatives)
        chosen.append(sorted(rng.permutation(k)[: config.negatives].tolist()) if k > config.negatives else range(k))
    return examples, chosen


def _valid_pairs(examples) -> torch.Tensor:
    """bool `(B, B)`: entry (i, j) True when caption j is false of scene i even with relaxed geometry."""
    return torch.tensor(
        [[not evaluate(a.scene.objects, b.caption, margin=-SAFETY_MARGIN).ok for b in examples] for a in examples]
    )


class _State:
    """Model, optimizer and step of one run."""

    def __init__(self, config: WorldClipConfig, device: str):
        self.config, self.device = config, device
        self.model = make_world_clip(config, config.seed).to(device)
        embedding = _token_embedding(self.model)
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p is not embedding:
                (decay if p.ndim >= 2 else no_decay).append(p)
        # The token embedding alone and without weight decay: rows of tokens no caption uses get zero gradients,
        # hence zero Adam updates, and keep their seeded values exactly (bundles store only the used rows).
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
                {"params": [embedding], "weight_decay": 0.0},
            ],
            lr=config.lr,
        )
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict):
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay reaching 0 after `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train_step(state: _State, step: int) -> dict[str, float]:
    c, model = state.config, state.model
    examples, chosen = _examples(c, step)
    pixels = preprocess(np.stack([render(e.scene) for e in examples]))  # (B, 3, S, S)
    negatives = [e.negatives[k].caption.text for e, ks in zip(examples, chosen) for k in ks]
    owner = torch.tensor([i for i, ks in enumerate(chosen) for _ in ks], dtype=torch.long)  # (M,)
    captions = [e.caption.text for e in examples]
    model.train()
    image = encode_images(model, pixels)  # (B, P)
    text = encode_texts(model, captions + negatives)  # (B + M, P)
    b = len(examples)
    out = world_clip_loss(
        image, text[:b], text[b:], owner, _logit_scale(model), _valid_pairs(examples), c.hard_negative_weight
    )
    for group in state.opt.param_groups:
        group["lr"] = c.lr * _lr_factor(step, c.warmup_steps, c.steps)
    state.opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    state.opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return {k: float(v.detach()) for k, v in out.items()}


def load_checkpoint(out_dir: str | os.PathLike) -> dict:
    """The newest checkpoint of `out_dir`: the dict `train_world_clip` saves (`step`, `model`, `opt`).

    Raises:
        FileNotFoundError: `out_dir` has no checkpoint.
    """
    return runs.load_newest(out_dir, "train_world_clip")


# Fields a resumed run may change without changing the weights of the steps already done. `steps` is not one:
# it sets the cosine schedule.
RESUMABLE_FIELDS = ("checkpoint_every",)


def _save_model(state: _State, path: Path):
    """Write the model of `state` to `path` atomically (`save_pretrained`), marked with its step."""
    runs.save_output(
        path, lambda folder: state.model.save_pretrained(folder, safe_serialization=True), {"step": state.step}
    )


def train_world_clip(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = STEPS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    sizes: WorldClipSizes | None = None,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    **options,
) -> dict:
    """Train (or resume training) the world CLIP in `out_dir` (see the module docstring).

    Args:
        out_dir (str | PathLike): run folder: `train_config.json`, `log.jsonl`, `checkpoints/`, `model/`.
        seed, steps, batch_size, lr, sizes: `WorldClipConfig` fields (sizes None means `WorldClipSizes()`).
        device (str): torch device. Default "cpu".
        progress (bool): show a tqdm bar with the loss. Default True.
        stop_after (int | None): stop (with a checkpoint) once this many steps are done, to run in slices; None
            trains to the end. Default None.
        **options: other `WorldClipConfig` fields (weight_decay, warmup_steps, negatives, temperature,
            hard_negative_weight, checkpoint_every, category_weights).

    Returns:
        dict: `step` (steps done), `done`, `model` (path of the saved model, or None), `loss`, `contrastive`,
        `hard` (last values of this call, None if it made no step), `steps_per_s` (this call),
        `parameters` (of the model).

    Raises:
        ValueError: a bad argument, or `out_dir` holding a run with a different configuration (naming the fields).

    Example:
        >>> train_world_clip("/tmp/clip", steps=3, batch_size=4, sizes=WorldClipSizes.tiny(),
        ...                  progress=False)["done"]  # doctest: +SKIP
        True
    """
    unknown = sorted(set(options) - {f.name for f in fields(WorldClipConfig)})
    if unknown:
        raise ValueError(f"unknown options {unknown}; pass fields of WorldClipConfig.")
    config = WorldClipConfig(
        seed=seed,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        sizes=WorldClipSizes() if sizes is None else sizes,
        **options,
    )
    if stop_after is not None:
        _check_int("stop_after", stop_after, 1)
    out_dir = Path(out_dir)
    runs.check_same_config(out_dir, config.to_dict(), RESUMABLE_FIELDS)  # before writing anything
    state = _State(config, device)
    if runs.checkpoints(out_dir):
        state.load_state_dict(runs.load_newest(out_dir, "train_world_clip", map_location=device))
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.trim_log(out_dir / "log.jsonl", state.step)
    runs.write_config(out_dir, config.to_dict())
    end = config.steps if stop_after is None else min(stop_after, config.steps)
    result = {"loss": None, "contrastive": None, "hard": None}
    made, seconds = 0, 0.0
    bar = tqdm(total=end, initial=min(state.step, end), disable=not progress, desc="train_world_clip")
    with open(out_dir / "log.jsonl", "a") as log:
        while state.step < end:
            start = time.perf_counter()
            result = _train_step(state, state.step)
            elapsed = time.perf_counter() - start
            made, seconds = made + 1, seconds + elapsed
            state.step += 1
            log.write(json.dumps({"step": state.step, **result, "seconds": elapsed}) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{result['loss']:.4f}", hard=f"{result['hard']:.4f}")
            if state.step % config.checkpoint_every == 0 or state.step == end:
                runs.save_checkpoint(out_dir, state.step, state.state_dict(), config.to_dict(), KEEP_CHECKPOINTS)
    bar.close()
    done = state.step >= config.steps
    model = None
    if done:
        model = out_dir / "model"
        if runs.output_step(model) != state.step:
            _save_model(state, model)
    return {
        "step": state.step,
        "done": done,
        "model": None if model is None else str(model),
        **result,
        "steps_per_s": made / seconds if made else None,
        "parameters": count_parameters(state.model),
    }


def load_world_clip(out_dir: str | os.PathLike, device: str = "cpu") -> CLIPModel:
    """The world CLIP of a run folder, in eval mode: `out_dir/model` when the run is finished, else the weights of
    its newest checkpoint.

    Raises:
        FileNotFoundError: `out_dir` holds neither a model nor a checkpoint.
    """
    out_dir = Path(out_dir)
    if (out_dir / "model" / "config.json").exists():
        return CLIPModel.from_pretrained(out_dir / "model", local_files_only=True).to(device).eval()
    saved = load_checkpoint(out_dir)  # FileNotFoundError when there is none
    config = WorldClipConfig.from_dict(json.loads((out_dir / "train_config.json").read_text()))
    model = make_world_clip(config, config.seed)
    model.load_state_dict(saved["model"])
    return model.to(device).eval()


# ---- Evaluation -------------------------------------------------------------------------------------------------


def _normalised_embeddings(model: CLIPModel, images, texts: Sequence[str], batch_size: int):
    """Unit image embeddings `(N, P)` and unit text embeddings `(T, P)`, on the CPU, in batches."""
    pixels, model = preprocess(images), model.eval()
    image = [
        F.normalize(encode_images(model, pixels[s : s + batch_size]), dim=-1) for s in range(0, len(pixels), batch_size)
    ]
    text = [
        F.normalize(encode_texts(model, texts[s : s + batch_size]), dim=-1) for s in range(0, len(texts), batch_size)
    ]
    return torch.cat(image).float().cpu(), torch.cat(text).float().cpu()


@torch.no_grad()
def evaluate_world_clip(
    model: CLIPModel,
    n: int = 200,
    split: str = "test_id",
    seed: int = 0,
    categories: Sequence[str] = CATEGORIES,
    batch_size: int = _EVAL_BATCH,
) -> dict:
    """Multiple-choice accuracy of `model` on `n` examples per category of `split`.

    - text side: an example is right when its image scores its caption above every one of its hard negatives;
    - kinds: per negative kind, the fraction of (example, negative of that kind) pairs the caption wins;
    - image side: a caption is right when its own image scores above every other image of the evaluated examples
      of its category of which the caption is false (even with relaxed geometry, margin `-SAFETY_MARGIN`).

    Args:
        model (CLIPModel): a world CLIP.
        n (int): examples per category, >= 1. Default 200.
        split (str): one of `splits.SPLITS`. Default "test_id".
        seed (int): dataset seed. Default 0.
        categories (Sequence[str]): categories to test. Default all of `captions.CATEGORIES`.
        batch_size (int): images per forward pass. Default 256.

    Returns:
        dict: `text` and `image` (category -> accuracy in [0, 1], plus "all", the mean over categories), `kinds`
        (negative kind -> accuracy, the kinds that occurred), `n`, `split`.

    Example:
        >>> evaluate_world_clip(load_world_clip("/work/world_clip_run"), n=50)["text"]  # doctest: +SKIP
        {'single': 1.0, 'two_objects': 0.98, ...}
    """
    _check_int("n", n, 1)
    check_choice("split", split, SPLITS)
    categories = [categories] if isinstance(categories, str) else list(categories)
    if not categories:
        raise ValueError("`categories` is empty; pass one or more of " + ", ".join(CATEGORIES) + ".")
    for category in categories:
        check_choice("category", category, CATEGORIES)
    image_size = model.config.vision_config.image_size
    text_acc, image_acc, kind_hits = {}, {}, {k: [] for k in KINDS}
    for category in categories:
        examples = make_dataset(n, split=split, seed=seed, categories=[category], image_size=image_size)
        images = np.stack([render(e.scene) for e in examples])  # (n, S, S, 3)
        choices = [[e.caption.text] + [x.caption.text for x in e.negatives] for e in examples]
        logits = clip_logits(model, images, choices, batch_size)  # (n, K)
        text_acc[category] = float((logits[:, 0] > logits[:, 1:].max(dim=1).values).float().mean())
        for e, row in zip(examples, logits):
            for k, negative in enumerate(e.negatives):
                kind_hits[negative.kind].append(bool(row[0] > row[k + 1]))
        # image side: every caption against every image
        image, text = _normalised_embeddings(model, images, [e.caption.text for e in examples], batch_size)
        sims = text @ image.T  # (n captions, n images)
        false = torch.tensor(
            [[not evaluate(b.scene.objects, a.caption, margin=-SAFETY_MARGIN).ok for b in examples] for a in examples]
        )  # (n, n): caption a false of scene b
        rivals = sims.masked_fill(~false, float("-inf")).max(dim=1).values  # (n,)
        image_acc[category] = float((sims.diagonal() > rivals).float().mean())
    text_acc["all"] = float(np.mean([text_acc[c] for c in categories]))
    image_acc["all"] = float(np.mean([image_acc[c] for c in categories]))
    kinds = {k: float(np.mean(v)) for k, v in kind_hits.items() if v}
    return {"text": text_acc, "image": image_acc, "kinds": kinds, "n": n, "split": split}


def _main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Train the shapes world's CLIP (resumes in OUT_DIR).")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny model (for a smoke run)")
    parser.add_argument("--evaluate", type=int, default=0, metavar="N", help="then evaluate N examples per category")
    args = parser.parse_args(argv)
    result = train_world_clip(
        args.out_dir,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        sizes=WorldClipSizes.tiny() if args.tiny else None,
        stop_after=args.stop_after,
    )
    if args.evaluate:
        model = load_world_clip(args.out_dir)
        result["evaluation"] = {
            s: evaluate_world_clip(model, n=args.evaluate, split=s) for s in ("test_id", "test_ood")
        }
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
