"""The discriminative adapter as a critic: its ITM logit scores, its REC head locates the prompt's phrases.

`suggest` reads the prompt's spatial relation (`layout.parse_relation`), asks the REC head where each phrase is
(the UNet conditioned on the phrase alone, the box of the most confident query over queries and timesteps, as
`train.evaluate_adapter` does), and where the boxes' centres break the relation proposes the planned layout
(`layout.plan_layout`): the two phrases on the sides the relation names. Where they satisfy it, or the prompt has
no relation, there is no suggestion (None).

Example:
    >>> critic = AdapterCritic(pipe, adapter, t=250)
    >>> critic.score(images, prompts)  # (N,) ITM logits
    >>> critic.suggest(images, ["a red circle to the left of a blue square"])[0]  # None where the boxes agree
"""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import torch

from ...adapter import DiscriminativeAdapter
from ...losses import box_cxcywh_to_xyxy
from ...probe import FeatureProbe
from ...scorers import AdapterScorer, as_pixels
from ...scoring import add_noise, encode_images
from ...text import encode_text, get_unet, unet_text_kwargs
from .base import Suggestion, check_pairs
from .layout import parse_relation, plan_layout, relation_holds

__all__ = ["AdapterCritic"]


def _check_timesteps(pipe, t) -> torch.Tensor:
    num = pipe.scheduler.config.num_train_timesteps
    values = [t] if isinstance(t, int) else t
    ok = (
        isinstance(values, (list, tuple))
        and values
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num for v in values)
    )
    if not ok:
        raise ValueError(f"`t` is {t!r}; pass an int or a list of ints in [0, {num - 1}], e.g. t=250.")
    return torch.tensor(values, dtype=torch.long)


class AdapterCritic:
    """ITM scores and REC-checked layouts of a `DiscriminativeAdapter` on its pipeline (see the module docstring).

    Args:
        pipe: the diffusers pipeline the adapter reads (SD / SDXL).
        adapter (DiscriminativeAdapter): built for `pipe`.
        t (int | list[int]): timestep(s) at which images are noised, for ITM and REC. Default 250.
        seed (int): seed of the noise (one draw per timestep, shared by all pairs). Default 0.
        batch_size (int | None): pairs per UNet call; all at once by default.
        name (str): default "adapter".
    """

    def __init__(
        self,
        pipe,
        adapter: DiscriminativeAdapter,
        t: int | Sequence[int] = 250,
        seed: int = 0,
        batch_size: int | None = None,
        name: str = "adapter",
    ):
        if not isinstance(adapter, DiscriminativeAdapter):
            raise ValueError(
                f"`adapter` is a {type(adapter).__name__}; pass a DiscriminativeAdapter (DiscriminativeAdapter."
                "from_pretrained(folder))."
            )
        self.timesteps = _check_timesteps(pipe, t)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1 or None.")
        self.scorer = AdapterScorer(pipe, adapter, t=self.timesteps.tolist(), batch_size=batch_size)  # checks the pair
        self.pipe, self.adapter, self.seed, self.batch_size, self.name = pipe, adapter, seed, batch_size, name

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 ITM logits (`scoring.itm_score` at `t`, seed 0)."""
        return self.scorer.score(images_or_latents, check_pairs(images_or_latents, prompts))

    def _latents(self, images) -> torch.Tensor:
        """Latents `(N, C, h, w)` of PIL images, `(N, 3, H, W)` pixels in [0, 1], `(N, H, W, 3)` uint8, or latents."""
        unet = get_unet(self.pipe)
        x = as_pixels(images)
        if isinstance(x, PIL.Image.Image) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], PIL.Image.Image)):
            return encode_images(self.pipe, [i.convert("RGB") for i in ([x] if isinstance(x, PIL.Image.Image) else x)])
        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point():
            if x.shape[1] == unet.config.in_channels:
                return x.to(device=unet.device, dtype=unet.dtype)
            if x.shape[1] == 3:
                return encode_images(self.pipe, x)
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(
            f"`images` is {shape}; pass PIL images, a (N, 3, H, W) tensor in [0, 1], a (N, H, W, 3) uint8 array or "
            f"latents (N, {unet.config.in_channels}, h, w)."
        )

    @torch.no_grad()
    def locate(self, images, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the REC head finds `phrases[i]` in image i.

        Args:
            images: N images (as `score` takes them).
            phrases (Sequence[str]): N phrases, e.g. "a red circle".

        Returns:
            tuple[torch.Tensor, torch.Tensor]: boxes `(N, 4)` (x0, y0, x1, y1) as fractions of the image, and the
            confidence `(N,)` p(object) of the most confident query over queries and timesteps.
        """
        phrases = check_pairs(images, phrases)
        unet = get_unet(self.pipe)
        latents = self._latents(images)  # (N, C, h, w)
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((len(self.timesteps), 1, *latents.shape[1:]), generator=generator).to(
            latents
        )  # (T, 1, C, h, w)
        abar = self.pipe.scheduler.alphas_cumprod
        probe = FeatureProbe(unet, self.adapter.config.layers, early_exit=True)
        size = self.batch_size or len(phrases)
        confidence, boxes = torch.full((len(phrases),), -1.0), torch.zeros(len(phrases), 4)
        for start in range(0, len(phrases), size):
            part = slice(start, start + size)
            x0, text = latents[part], encode_text(self.pipe, phrases[part])
            for k, t in enumerate(self.timesteps):
                step = t.to(x0.device).expand(x0.shape[0])  # (b,)
                xt = add_noise(abar, x0, noise[k].expand_as(x0), step)
                feats = probe(xt, step, text.encoder_hidden_states, **unet_text_kwargs(self.pipe, text, xt))
                out = self.adapter(feats, step, text_tokens=text.encoder_hidden_states)
                prob = out.rec_logits.float().softmax(-1)[..., 0].cpu()  # (b, Q) p(object)
                conf, q = prob.max(dim=1)  # (b,)
                box = out.boxes.float().cpu()[torch.arange(len(q)), q]  # (b, 4) cx, cy, w, h
                better = conf > confidence[part]
                confidence[part] = torch.where(better, conf, confidence[part])
                boxes[part] = torch.where(better[:, None], box, boxes[part])
        return box_cxcywh_to_xyxy(boxes).clamp(0, 1), confidence

    def suggest(self, images, prompts: Sequence[str]) -> list[Suggestion | None]:
        """Per pair, the planned layout where the REC boxes break the prompt's relation, else None."""
        prompts = check_pairs(images, prompts)
        relations = [parse_relation(p) for p in prompts]
        # 1. the phrases to locate: (image, phrase) for each phrase of each prompt with a relation
        pairs = [(i, phrase) for i, r in enumerate(relations) if r for phrase in (r.first, r.second) if phrase]
        out: list[Suggestion | None] = [None] * len(prompts)
        if not pairs:
            return out
        # 2. their boxes
        index = torch.tensor([i for i, _ in pairs])
        pixels = as_pixels(images)
        if isinstance(pixels, torch.Tensor):
            chosen = pixels[index]
        else:
            chosen = [([pixels] if isinstance(pixels, PIL.Image.Image) else pixels)[i] for i in index.tolist()]
        boxes = iter(self.locate(chosen, [p for _, p in pairs])[0].tolist())
        # 3. a layout where they break the relation
        for i, r in enumerate(relations):
            if r is None:
                continue
            found = [next(boxes)] + ([next(boxes)] if r.second else [])
            if relation_holds(r.relation, *found):
                continue
            where = ", ".join(f"{p!r} at {tuple(round(v, 2) for v in b)}" for p, b in zip((r.first, r.second), found))
            reason = f"the adapter finds {where}: not {r.relation}"
            out[i] = Suggestion(prompts[i], plan_layout(prompts[i]), reason)
        return out
