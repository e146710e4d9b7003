"""A LAION-style aesthetic evaluator: a small linear head on a CLIP's L2-normalised image embedding; prompts are
ignored.

The head is LAION's improved aesthetic predictor's architecture (five linear layers, D -> 1024 -> 128 -> 64 -> 16
-> 1 with dropout between the first four and no activation, D the CLIP's projection width, 768 for ViT-L/14), with
the same parameter names (`layers.0`, `layers.2`, `layers.4`, `layers.6`, `layers.7`), so its released
ViT-L/14 weights load once converted to safetensors:

    state = torch.load("sac+logos+ava1-l14-linearMSE.pth", weights_only=True)
    safetensors.torch.save_file(state, "aesthetic.safetensors")

Example:
    >>> scorer = AestheticScorer("/models/clip-vit-large-patch14", "/models/aesthetic.safetensors")
    >>> scorer.score(images, prompts)  # (N,) predicted ratings, about 1-10 with LAION's head
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .clip import CLIP_SOURCE, CLIPScorer
from .inputs import check_pairs, require_folder

__all__ = ["HEAD_SOURCE", "AestheticHead", "AestheticScorer"]

HEAD_SOURCE = (
    "LAION's improved aesthetic predictor (github.com/christophschuhmann/improved-aesthetic-predictor, "
    "sac+logos+ava1-l14-linearMSE.pth for ViT-L/14), converted with safetensors.torch.save_file(torch.load(pth, "
    "weights_only=True), '{path}')"
)


class AestheticHead(nn.Module):
    """Linear layers `dim -> 1024 -> 128 -> 64 -> 16 -> 1` with dropout (0.2, 0.2, 0.1) after the first three.

    Args:
        dim (int): width of the CLIP image embedding. Default 768 (ViT-L/14).

    Shapes: `(N, dim)` L2-normalised embeddings -> `(N,)` ratings.

    Example:
        >>> AestheticHead(24).eval()(torch.zeros(2, 24)).shape
        torch.Size([2])
    """

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds).squeeze(-1)


class AestheticScorer:
    """LAION-style aesthetic ratings of images (see the module docstring).

    Args:
        clip_path (str | PathLike): a transformers CLIP folder (openai/clip-vit-large-patch14 for LAION's head).
        head_path (str | PathLike): the head's safetensors file.
        device (str | torch.device): default the CPU.
        batch_size (int): images per forward pass. Default 32.
        name (str): for tables. Default "aesthetic".
        dtype (torch.dtype): the precision of the CLIP and the head. Default float32.

    Attributes:
        clip (CLIPScorer): the CLIP whose image embeddings are rated. head (AestheticHead): the head.
        model (str): which models, "AestheticHead <head_path> on CLIPModel at <clip_path>".

    Raises:
        FileNotFoundError: no CLIP folder or head file (names the path and where such weights come from), before
            anything loads.
        ValueError: a head whose parameters do not fit (names the mismatch).
    """

    def __init__(
        self,
        clip_path,
        head_path,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        name: str = "aesthetic",
        dtype: torch.dtype = torch.float32,
    ):
        from safetensors.torch import load_file

        head_file = Path(os.fspath(head_path))
        require_folder(clip_path, CLIP_SOURCE)  # both paths are checked before anything loads
        if not head_file.is_file():
            raise FileNotFoundError(
                f"No aesthetic head at {head_file}; it comes from {HEAD_SOURCE.format(path=head_file)}."
            )
        self.clip = CLIPScorer.from_pretrained(clip_path, device=device, dtype=dtype, batch_size=batch_size)
        dim = self.clip.clip_model.config.projection_dim
        self.head = AestheticHead(dim)
        state = load_file(head_file)
        expected = {k: tuple(v.shape) for k, v in self.head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            diff = sorted(set(found.items()) ^ set(expected.items()))[:4]
            raise ValueError(
                f"{head_file} does not fit an aesthetic head on this CLIP (projection width {dim}): parameters differ "
                f"at {diff}; pass the head trained on this CLIP's embeddings."
            )
        self.head.load_state_dict(state)
        self.head.to(device, dtype).eval()
        self.name, self.model = name, f"AestheticHead {head_file} on {self.clip.model}"

    @classmethod
    def from_pretrained(
        cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *, head_path, **kwargs
    ):
        """`cls(path, head_path, device=device, dtype=dtype, **kwargs)`: the head file `head_path` on the CLIP folder
        `path`."""
        return cls(path, head_path, device=device, dtype=dtype, **kwargs)

    @torch.no_grad()
    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 ratings of the images (prompts only checked for their count)."""
        check_pairs(images, prompts)
        param = next(self.head.parameters())
        return self.head(self.clip.image_embeds(images).to(param.device, param.dtype)).float().cpu()
