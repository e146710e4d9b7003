"""The world CLIP as a differentiable reward of generated images (`interaction.reward.train_reward`): how much more
the image matches its prompt than the prompt's own negatives (`negatives.prompt_negatives`, with each phrase alone
for prompts of two objects, so that an image missing one of them scores low).

Example:
    >>> from discadapt.worlds.shapes import make_dataset, render
    >>> from discadapt.worlds.shapes.clip import WorldClipSizes, make_world_clip, preprocess
    >>> model = make_world_clip(WorldClipSizes.tiny(), seed=0)
    >>> images = preprocess(render(make_dataset(1, split="train", image_size=32)[0].scene)[None])
    >>> HardNegativeReward(model)(images, ["a red circle to the left of a blue square"]).shape
    torch.Size([1])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import CLIPModel

from ..negatives import DROP_PHRASE, KINDS, prompt_negatives
from .inputs import encode_images, encode_texts
from .model import logit_scale

__all__ = ["HardNegativeReward"]


class HardNegativeReward:
    """`log p(prompt | image)` among the prompt and its negatives under the world CLIP (a softmax over the logit scale
    times the cosine similarities), differentiable in the image; the model's weights stay frozen.

    Args:
        model (CLIPModel): a world CLIP (`bundle.load_clip`).
        kinds (Sequence[str]): the negatives' kinds (`prompt_negatives`). Default every hard-negative kind and
            `DROP_PHRASE`.
    """

    def __init__(self, model: CLIPModel, kinds: Sequence[str] = (*KINDS, DROP_PHRASE)):
        self.model = model.eval().requires_grad_(False)
        self.kinds = tuple(kinds)
        self._texts: dict[str, torch.Tensor] = {}

    def choices(self, prompt: str) -> list[str]:
        """The prompt, then its negatives."""
        return [prompt] + [n.caption.text for n in prompt_negatives(prompt, kinds=self.kinds)]

    def _text(self, prompt: str) -> torch.Tensor:
        if prompt not in self._texts:
            with torch.no_grad():
                self._texts[prompt] = F.normalize(encode_texts(self.model, self.choices(prompt)), dim=-1)
        return self._texts[prompt]

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """`(B,)` rewards of `images` `(B, 3, S, S)` in [-1, 1] (the model's input range) for `prompts`."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts; pass one prompt per image.")
        image = F.normalize(encode_images(self.model, images), dim=-1)  # (B, P)
        scale = logit_scale(self.model)
        rows = [torch.log_softmax(scale * self._text(p).to(image) @ image[i], dim=0)[0] for i, p in enumerate(prompts)]
        return torch.stack(rows)
