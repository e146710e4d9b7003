"""CLIP critics: the scaled cosine similarity of a CLIP's image and text embeddings, as `logits_per_image`.

- `CLIPCritic`: a transformers `CLIPModel` with its processor, `CLIPCritic.from_pretrained(folder)` offline.
- `OpenCLIPCritic`: an open_clip model with weights from a local file (open_clip is optional: `pip install
  open_clip_torch`, which needs torchvision).

Both suggest the layouts planned from the prompts (`base.LayoutCritic`): CLIP does not see where things are.

Example:
    >>> critic = CLIPCritic.from_pretrained("/models/clip-vit-large-patch14")
    >>> critic.score(images, ["a red cube on a blue sphere"] * len(images))  # (N,)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ...evaluators.inputs import check_pairs, features, require_folder, to_pil
from .base import LayoutCritic

__all__ = ["CLIPCritic", "OpenCLIPCritic", "features", "require_folder"]

CLIP_SOURCE = (
    "download one with `huggingface-cli download openai/clip-vit-large-patch14 --local-dir {path}` (or another "
    "transformers CLIPModel repository)"
)


class CLIPCritic(LayoutCritic):
    """`exp(logit_scale) * cos(image embedding, text embedding)` of a transformers `CLIPModel`.

    Args:
        model (CLIPModel): the model (its device and dtype are used).
        processor (CLIPProcessor): its image processor and tokenizer.
        batch_size (int): images per forward pass. Default 32.
        layout (bool): suggest planned layouts. Default True.
        name (str): default "CLIP".
    """

    def __init__(self, model, processor, batch_size: int = 32, layout: bool = True, name: str = "CLIP"):
        if not all(callable(getattr(model, f, None)) for f in ("get_image_features", "get_text_features")):
            raise ValueError(f"`model` is a {type(model).__name__}; pass a transformers CLIPModel.")
        if not callable(processor) or getattr(processor, "tokenizer", None) is None:
            raise ValueError(f"`processor` is a {type(processor).__name__}; pass the model's CLIPProcessor.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
        self.model, self.processor, self.batch_size = model.eval(), processor, batch_size
        self.layout, self.name = bool(layout), name

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs):
        """A `CLIPCritic` from a local transformers CLIP folder (offline).

        Args:
            path (str | PathLike): e.g. a download of openai/clip-vit-large-patch14.
            device, dtype: where and in what precision the model runs. Default the CPU, float32.
            **kwargs: `batch_size`, `layout`, `name`.

        Raises:
            FileNotFoundError: no model at `path` (names it and where to download one).
        """
        from transformers import CLIPModel, CLIPProcessor

        folder = require_folder(path, CLIP_SOURCE)
        model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)
        return cls(model, CLIPProcessor.from_pretrained(folder, local_files_only=True), **kwargs)

    @property
    def _device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def image_embeds(self, images) -> torch.Tensor:
        """L2-normalised image embeddings `(N, P)`, float32 on the CPU."""
        pil, out = to_pil(images), []
        param = next(self.model.parameters())
        for start in range(0, len(pil), self.batch_size):
            pixels = self.processor(images=pil[start : start + self.batch_size], return_tensors="pt")["pixel_values"]
            emb = features(self.model.get_image_features(pixel_values=pixels.to(param.device, param.dtype)))
            out.append(F.normalize(emb.float(), dim=-1).cpu())  # (n, P)
        return torch.cat(out)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings `(N, P)`, float32 on the CPU (prompts truncated to the model's length)."""
        limit = self.model.config.text_config.max_position_embeddings
        out = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.processor.tokenizer(
                list(prompts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            ).to(self._device)
            emb = features(
                self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            )
            out.append(F.normalize(emb.float(), dim=-1).cpu())  # (n, P)
        return torch.cat(out)

    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 `exp(logit_scale) * cos`, as the diagonal of `CLIPModel(...).logits_per_image`."""
        prompts = check_pairs(images, prompts)
        scale = self.model.logit_scale.detach().float().exp().cpu()
        return scale * (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)


def _import_open_clip():
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            f"OpenCLIPCritic needs open_clip, which failed to import ({err}); install it with `pip install "
            "open_clip_torch` (it imports torchvision: install one that matches your torch), or use CLIPCritic."
        ) from err
    return open_clip


class OpenCLIPCritic(LayoutCritic):
    """`exp(logit_scale) * cos` of an open_clip model with local weights.

    Args:
        model_name (str): an open_clip architecture, e.g. "ViT-H-14" (`open_clip.list_models()`).
        pretrained (str | PathLike): its weights file (.safetensors or .bin), e.g. open_clip_pytorch_model.bin of
            laion/CLIP-ViT-H-14-laion2B-s32B-b79K.
        device (str | torch.device): default the CPU.
        batch_size (int): images per forward pass. Default 32.
        layout (bool): suggest planned layouts. Default True.
        name (str): default "open_clip <model_name>".

    Raises:
        FileNotFoundError: no file at `pretrained` (checked before open_clip is imported).
        ImportError: open_clip does not import.
    """

    def __init__(
        self,
        model_name: str,
        pretrained,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        layout: bool = True,
        name: str = "",
    ):
        path = Path(os.fspath(pretrained))
        if not path.is_file():
            raise FileNotFoundError(
                f"No open_clip weights at {path}; download them, e.g. `huggingface-cli download "
                f"laion/CLIP-ViT-H-14-laion2B-s32B-b79K open_clip_pytorch_model.bin --local-dir {path.parent}`, and "
                "pass the file as `pretrained`."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
        open_clip = _import_open_clip()
        if model_name not in open_clip.list_models():
            raise ValueError(f"`model_name` is {model_name!r}; pick one of open_clip.list_models(), e.g. 'ViT-H-14'.")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(path), device=device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.batch_size, self.layout = torch.device(device), batch_size, bool(layout)
        self.name = name or f"open_clip {model_name}"

    @torch.no_grad()
    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 `exp(logit_scale) * cos` of image i and prompt i."""
        prompts, pil, out = check_pairs(images, prompts), to_pil(images), []
        for start in range(0, len(pil), self.batch_size):
            part = slice(start, start + self.batch_size)
            pixels = torch.stack([self.preprocess(i) for i in pil[part]]).to(self.device)  # (n, 3, S, S)
            image = F.normalize(self.model.encode_image(pixels).float(), dim=-1)  # (n, P)
            text = F.normalize(self.model.encode_text(self.tokenizer(prompts[part]).to(self.device)).float(), dim=-1)
            out.append((self.model.logit_scale.float().exp() * (image * text).sum(-1)).cpu())
        return torch.cat(out)
