"""CLIP critics: the CLIP evaluators (`evaluators.clip`) with the planned-layout suggestions of `base.LayoutCritic`
(CLIP does not see where things are). They score with `exp(logit_scale) * cos`, the model's `logits_per_image`.

- `CLIPCritic`: a transformers `CLIPModel` with its processor, `CLIPCritic.from_pretrained(folder)` offline.
- `OpenCLIPCritic`: an open_clip model with weights from a local file (open_clip is optional: `pip install
  open_clip_torch`, which needs torchvision).

Example:
    >>> critic = CLIPCritic.from_pretrained("/models/clip-vit-large-patch14")
    >>> critic.score(images, ["a red cube on a blue sphere"] * len(images))  # (N,)
"""

from __future__ import annotations

import torch

from ...evaluators.clip import CLIPScorer, OpenCLIPScorer
from ...evaluators.inputs import features, require_folder
from .base import LayoutCritic

__all__ = ["CLIPCritic", "OpenCLIPCritic", "features", "require_folder"]


class CLIPCritic(LayoutCritic, CLIPScorer):
    """`exp(logit_scale) * cos(image embedding, text embedding)` of a transformers `CLIPModel` (`CLIPScorer`),
    suggesting planned layouts.

    Args:
        model (CLIPModel): the model (its device and dtype are used).
        processor (CLIPProcessor): its image processor and tokenizer.
        batch_size (int): images per forward pass. Default 32.
        layout (bool): suggest planned layouts. Default True.
        name (str): default "CLIP".

    `CLIPCritic.from_pretrained(path, device="cpu", dtype=torch.float32, **kwargs)` loads a local folder (see
    `CLIPScorer.from_pretrained`).
    """

    def __init__(self, model, processor, batch_size: int = 32, layout: bool = True, name: str = "CLIP"):
        CLIPScorer.__init__(self, model, processor, batch_size=batch_size, scale="logit", name=name)
        self.layout = bool(layout)


class OpenCLIPCritic(LayoutCritic, OpenCLIPScorer):
    """`exp(logit_scale) * cos` of an open_clip model with local weights (`OpenCLIPScorer`), suggesting planned
    layouts.

    Args:
        model_name (str): an open_clip architecture, e.g. "ViT-H-14" (`open_clip.list_models()`).
        pretrained (str | PathLike): its weights file (.safetensors or .bin).
        device (str | torch.device): default the CPU.
        batch_size (int): images per forward pass. Default 32.
        layout (bool): suggest planned layouts. Default True.
        name (str): default "open_clip <model_name>".
        dtype (torch.dtype): the model's precision. Default float32.

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
        dtype: torch.dtype = torch.float32,
    ):
        OpenCLIPScorer.__init__(
            self, model_name, pretrained, device=device, batch_size=batch_size, scale="logit", name=name, dtype=dtype
        )
        self.layout = bool(layout)
