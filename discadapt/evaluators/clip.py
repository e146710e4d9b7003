"""CLIP evaluators: the cosine similarity of a CLIP's image and text embeddings, scaled one of two ways.

- `CLIPScorer`: a transformers `CLIPModel` with its processor, `CLIPScorer.from_pretrained(folder)` offline.
- `OpenCLIPScorer`: an open_clip model with weights from a local file (open_clip is optional: `pip install
  open_clip_torch`, which needs torchvision).
- `scale_cosine(cos, scale, logit_scale)`: the two conventions, chosen with `scale`:
  - `"logit"`: `exp(logit_scale) * cos`, the model's own `logits_per_image` (what the interaction critics rank);
  - a number w: `w * max(cos, 0)` per pair, the CLIP score of Hessel et al. 2021 (w = 2.5) and of torchmetrics'
    `CLIPScore` (w = 100; torchmetrics clamps the mean over pairs instead, the same wherever cosines are positive, as
    a trained CLIP's are on captions), which is what `discadapt bench` reports as "CLIP score".

Example:
    >>> scorer = CLIPScorer.from_pretrained("/models/clip-vit-large-patch14", scale=100.0, name="CLIP score")
    >>> scorer.score(images, ["a red cube on a blue sphere"] * len(images))  # (N,) in [0, 100]
    >>> scorer.model
    'CLIPModel at /models/clip-vit-large-patch14'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Real
from pathlib import Path

import torch
import torch.nn.functional as F

from .inputs import check_pairs, features, require_folder, to_pil

__all__ = ["CLIP_SOURCE", "CLIPScorer", "OpenCLIPScorer", "scale_cosine"]

CLIP_SOURCE = (
    "download one with `huggingface-cli download openai/clip-vit-large-patch14 --local-dir {path}` (or another "
    "transformers CLIPModel repository)"
)


def _check_scale(scale) -> str | float:
    if scale == "logit":
        return scale
    if isinstance(scale, Real) and not isinstance(scale, bool) and scale > 0 and scale != float("inf"):
        return float(scale)
    raise ValueError(
        f"`scale` is {scale!r}; pass 'logit' for exp(logit_scale) * cos (the model's logits) or a positive number w "
        "for w * max(cos, 0) (torchmetrics' CLIPScore: 100.0)."
    )


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
    return batch_size


def scale_cosine(cos: torch.Tensor, scale: str | float, logit_scale: torch.Tensor) -> torch.Tensor:
    """`exp(logit_scale) * cos` for `scale="logit"`, else `scale * max(cos, 0)`.

    Args:
        cos (torch.Tensor): `(N,)` cosine similarities of image i and text i.
        scale (str | float): "logit" or a positive number w (see the module docstring).
        logit_scale (torch.Tensor): the CLIP's learnt log temperature (a scalar); read only for "logit".

    Returns:
        torch.Tensor: `(N,)` float32 on the CPU.

    Example:
        >>> scale_cosine(torch.tensor([0.5, -0.25]), 100.0, torch.tensor(4.6052))
        tensor([50.,  0.])
    """
    cos = cos.detach().float().cpu()
    if _check_scale(scale) == "logit":
        return logit_scale.detach().float().exp().cpu() * cos
    return scale * cos.clamp(min=0)


class CLIPScorer:
    """A transformers `CLIPModel`'s scaled cosine of image i and prompt i (see the module docstring).

    Args:
        model (CLIPModel): the model (its device and dtype are used).
        processor (CLIPProcessor): its image processor and tokenizer.
        batch_size (int): images per forward pass. Default 32.
        scale (str | float): "logit" for `exp(logit_scale) * cos`, or w for `w * max(cos, 0)`. Default "logit".
        name (str): for tables. Default "CLIP".

    Attributes:
        clip_model (CLIPModel): the model. model (str): which model, e.g. "CLIPModel at /models/clip-vit-large-patch14".

    Raises:
        ValueError: a bad argument (names it and the fix).
    """

    def __init__(self, model, processor, batch_size: int = 32, scale: str | float = "logit", name: str = "CLIP"):
        self.batch_size, self.scale = _check_batch_size(batch_size), _check_scale(scale)
        if not all(callable(getattr(model, f, None)) for f in ("get_image_features", "get_text_features")):
            raise ValueError(f"`model` is a {type(model).__name__}; pass a transformers CLIPModel.")
        if not callable(processor) or getattr(processor, "tokenizer", None) is None:
            raise ValueError(f"`processor` is a {type(processor).__name__}; pass the model's CLIPProcessor.")
        self.clip_model, self.processor, self.name = model.eval(), processor, name
        where = getattr(model, "name_or_path", "")
        self.model = f"{type(model).__name__} at {where}" if where else type(model).__name__

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs):
        """A scorer from a local transformers CLIP folder (offline).

        Args:
            path (str | PathLike): e.g. a download of openai/clip-vit-large-patch14.
            device, dtype: where and in what precision the model runs. Default the CPU, float32.
            **kwargs: the constructor's other arguments (`batch_size`, `scale`, `name`, ...).

        Raises:
            FileNotFoundError: no model at `path` (names it and where to download one), before anything loads.
        """
        from transformers import CLIPModel, CLIPProcessor

        folder = require_folder(path, CLIP_SOURCE)
        model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)
        return cls(model, CLIPProcessor.from_pretrained(folder, local_files_only=True), **kwargs)

    @torch.no_grad()
    def image_embeds(self, images) -> torch.Tensor:
        """L2-normalised image embeddings `(N, P)`, float32 on the CPU."""
        pil, out = to_pil(images), []
        param = next(self.clip_model.parameters())
        for start in range(0, len(pil), self.batch_size):
            pixels = self.processor(images=pil[start : start + self.batch_size], return_tensors="pt")["pixel_values"]
            emb = features(self.clip_model.get_image_features(pixel_values=pixels.to(param.device, param.dtype)))
            out.append(F.normalize(emb.float(), dim=-1).cpu())  # (n, P)
        return torch.cat(out)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings `(N, P)`, float32 on the CPU (prompts truncated to the model's length)."""
        limit = self.clip_model.config.text_config.max_position_embeddings
        device, out = next(self.clip_model.parameters()).device, []
        for start in range(0, len(prompts), self.batch_size):
            part = list(prompts[start : start + self.batch_size])
            tokens = self.processor.tokenizer(
                part, padding=True, truncation=True, max_length=limit, return_tensors="pt"
            ).to(device)
            emb = self.clip_model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            out.append(F.normalize(features(emb).float(), dim=-1).cpu())  # (n, P)
        return torch.cat(out)

    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 scaled cosines of image i and prompt i (with "logit", the diagonal of
        `CLIPModel(...).logits_per_image`)."""
        prompts = check_pairs(images, prompts)
        cos = (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)  # (N,)
        return scale_cosine(cos, self.scale, self.clip_model.logit_scale)


def _import_open_clip(user: str):
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            f"{user} needs open_clip, which failed to import ({err}); install it with `pip install open_clip_torch` "
            "(it imports torchvision: install one that matches your torch), or use a transformers CLIP (CLIPScorer)."
        ) from err
    return open_clip


class OpenCLIPScorer:
    """An open_clip model's scaled cosine of image i and prompt i, with local weights (see the module docstring).

    Args:
        model_name (str): an open_clip architecture, e.g. "ViT-H-14" (`open_clip.list_models()`).
        pretrained (str | PathLike): its weights file (.safetensors or .bin), e.g. open_clip_pytorch_model.bin of
            laion/CLIP-ViT-H-14-laion2B-s32B-b79K.
        device (str | torch.device): default the CPU.
        batch_size (int): images per forward pass. Default 32.
        scale (str | float): "logit" for `exp(logit_scale) * cos`, or w for `w * max(cos, 0)`. Default "logit".
        name (str): for tables. Default "open_clip <model_name>".
        dtype (torch.dtype): the model's precision. Default float32.

    Attributes:
        clip_model (torch.nn.Module): the model. model (str): which model, "open_clip <model_name> at <pretrained>".

    Raises:
        FileNotFoundError: no file at `pretrained` (checked before open_clip is imported).
        ImportError: open_clip does not import (says what to install).
        ValueError: a bad argument (names it and the fix).
    """

    def __init__(
        self,
        model_name: str,
        pretrained,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        scale: str | float = "logit",
        name: str = "",
        dtype: torch.dtype = torch.float32,
    ):
        path = Path(os.fspath(pretrained))
        if not path.is_file():
            raise FileNotFoundError(
                f"No open_clip weights at {path}; download them, e.g. `huggingface-cli download "
                f"laion/CLIP-ViT-H-14-laion2B-s32B-b79K open_clip_pytorch_model.bin --local-dir {path.parent}`, and "
                "pass the file as `pretrained`."
            )
        self.batch_size, self.scale = _check_batch_size(batch_size), _check_scale(scale)
        open_clip = _import_open_clip(type(self).__name__)
        if model_name not in open_clip.list_models():
            raise ValueError(f"`model_name` is {model_name!r}; pick one of open_clip.list_models(), e.g. 'ViT-H-14'.")
        model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(path), device=device
        )
        self.clip_model = model.to(device, dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.dtype = torch.device(device), dtype
        self.name = name or f"open_clip {model_name}"
        self.model = f"open_clip {model_name} at {path}"

    @classmethod
    def from_pretrained(
        cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *, model_name: str, **kwargs
    ):
        """`cls(model_name, path, device=device, dtype=dtype, **kwargs)`: a scorer from a local weights file `path`
        of the open_clip architecture `model_name`."""
        return cls(model_name, path, device=device, dtype=dtype, **kwargs)

    @torch.no_grad()
    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 scaled cosines of image i and prompt i."""
        prompts, pil, cos = check_pairs(images, prompts), to_pil(images), []
        for start in range(0, len(pil), self.batch_size):
            part = slice(start, start + self.batch_size)
            pixels = torch.stack([self.preprocess(i) for i in pil[part]]).to(self.device, self.dtype)  # (n, 3, S, S)
            image = F.normalize(self.clip_model.encode_image(pixels).float(), dim=-1)  # (n, P)
            tokens = self.tokenizer(prompts[part]).to(self.device)  # (n, L)
            text = F.normalize(self.clip_model.encode_text(tokens).float(), dim=-1)  # (n, P)
            cos.append((image * text).sum(-1).cpu())
        return scale_cosine(torch.cat(cos), self.scale, self.clip_model.logit_scale)
