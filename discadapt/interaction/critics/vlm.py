"""A vision-language model as a critic: it rates an image against its prompt and suggests a refined prompt and
regions, in a JSON reply.

The critic shows the VLM the image and an instruction (`DEFAULT_INSTRUCTION`, "{prompt}" filled in) through the
processor's chat template, generates greedily, and reads the first JSON object of the reply (`parse_reply`):

    {"score": 0-10, "prompt": "a refined prompt", "regions": [{"box": [x0, y0, x1, y1], "prompt": "..."}],
     "reason": "..."}

Replies are read leniently: text and code fences around the object, a numeric string as the score ("7", "7/10"),
trailing commas. Scores are clamped to [0, 10], boxes to the image ([0, 1]); a region without four numbers and a
prompt, or empty once clamped, is dropped. A reply without a JSON object or without a usable score is logged (a
`logging` warning) and scores `fallback_score` (default 5, the middle of the scale): never an exception. Replies
are cached by image content and prompt, so `score` then `suggest` on the same images generates once.

Example:
    >>> critic = VLMCritic.from_pretrained("/models/Qwen2.5-VL-3B-Instruct", max_new_tokens=200)
    >>> critic.score(images, prompts)  # (N,) in [0, 10]
    >>> critic.suggest(images, prompts)  # a Suggestion or None per image
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from ...sampling.regions import Region
from .base import Suggestion, check_pairs, to_pil
from .clip import require_folder

__all__ = ["DEFAULT_INSTRUCTION", "Review", "VLMCritic", "parse_reply"]

logger = logging.getLogger(__name__)

SCORE_RANGE = (0.0, 10.0)
DEFAULT_INSTRUCTION = (
    'This image was generated from the prompt "{prompt}". Rate from 0 to 10 how well it shows what the prompt says '
    "(objects, counts, colors, positions). If it could follow the prompt better, suggest a clearer prompt and the "
    "boxes where objects should be, as fractions [x0, y0, x1, y1] of the image width and height (x to the right, y "
    'down), each with what it should show. Reply with JSON only: {"score": 6, "prompt": "...", "regions": '
    '[{"box": [0.0, 0.0, 0.5, 1.0], "prompt": "..."}], "reason": "..."}'
)
VLM_SOURCE = (
    "download an instruction-tuned image-text-to-text model, e.g. `huggingface-cli download "
    "Qwen/Qwen2.5-VL-3B-Instruct --local-dir {path}`"
)


@dataclass(frozen=True)
class Review:
    """What the VLM said about one image.

    Attributes:
        score (float): in [0, 10], or the critic's fallback score when the reply had none.
        suggestion (Suggestion | None): a refined prompt and/or regions; None when it suggests nothing.
        reply (str): the raw reply.
        ok (bool): the reply held a JSON object with a usable score.
    """

    score: float
    suggestion: Suggestion | None
    reply: str
    ok: bool


def _blocks(text: str):
    """The top-level `{...}` spans of `text`, braces inside JSON strings ignored."""
    depth, start, in_string, escaped = 0, 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth:
            in_string = True
        elif ch == "{":
            start, depth = (i if depth == 0 else start), depth + 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]


def _first_object(text: str) -> dict | None:
    """The first top-level JSON object in `text` (prose and code fences around it ignored, trailing commas
    tolerated); None when there is none (e.g. a reply cut off inside its object)."""
    for block in _blocks(text):
        for candidate in (block, re.sub(r",\s*([}\]])", r"\1", block)):
            try:
                value = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _number(value) -> float | None:
    """A finite float from a number or a numeric string ("7", "7.5/10"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.match(r"\s*(-?\d+(?:\.\d+)?)", value)
        value = match.group(1) if match else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _region(item) -> Region | None:
    """A `Region` from {"box": [x0, y0, x1, y1], "prompt": str}, the box clamped to [0, 1]; None if unusable."""
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
        return None
    box = item.get("box")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    values = [_number(v) if not isinstance(v, str) else None for v in box]
    if any(v is None for v in values):
        return None
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in values)
    if not (x0 < x1 and y0 < y1):
        return None
    return Region((x0, y0, x1, y1), item["prompt"].strip())


def parse_reply(reply: str, prompt: str, fallback_score: float = 5.0) -> Review:
    """Read a VLM's reply (see the module docstring); malformed parts are logged and skipped, never raised.

    Args:
        reply (str): the generated text.
        prompt (str): the image's prompt (the suggestion's prompt when the reply refines none).
        fallback_score (float): the score of a reply without a usable one. Default 5.

    Example:
        >>> reply = 'Sure! ```json\\n{"score": 12, "regions": [{"box": [-1, 0, 0.5, 1], "prompt": "a cat"}]}\\n```'
        >>> review = parse_reply(reply, "a cat left of a dog")
        >>> review.score, review.suggestion.regions[0].box
        (10.0, (0.0, 0.0, 0.5, 1.0))
    """
    data = _first_object(reply if isinstance(reply, str) else "")
    if data is None:
        logger.warning("VLM reply without a JSON object, scored %s: %.200r", fallback_score, reply)
        return Review(float(fallback_score), None, str(reply), False)
    score = _number(data.get("score"))
    if score is None:
        logger.warning("VLM reply without a numeric 'score', scored %s: %.200r", fallback_score, reply)
    regions_in = data.get("regions") or []
    if not isinstance(regions_in, list):
        logger.warning("VLM reply's 'regions' is not a list, ignored: %.200r", regions_in)
        regions_in = []
    regions = [_region(item) for item in regions_in]
    if any(r is None for r in regions):
        dropped = [item for item, r in zip(regions_in, regions) if r is None]
        logger.warning("VLM reply: dropped %d unusable region(s): %.200r", len(dropped), dropped)
    regions = [r for r in regions if r is not None]
    refined = data.get("prompt")
    refined = refined.strip() if isinstance(refined, str) and refined.strip() else prompt
    reason = data.get("reason") if isinstance(data.get("reason"), str) else ""
    suggestion = (
        Suggestion(refined, regions, reason or "the VLM's suggestion") if regions or refined != prompt else None
    )
    low, high = SCORE_RANGE
    value = float(fallback_score) if score is None else min(max(score, low), high)
    return Review(value, suggestion, reply, score is not None)


def _key(image: PIL.Image.Image, prompt: str) -> tuple:
    array = np.asarray(image)
    return hashlib.sha1(array.tobytes()).hexdigest(), array.shape, prompt


class VLMCritic:
    """Scores and suggestions of a vision-language model (see the module docstring).

    Args:
        model: a transformers image-text-to-text model (`AutoModelForImageTextToText`); None with `reply_fn`.
        processor: its processor (`AutoProcessor`), with a chat template; None with `reply_fn`.
        instruction (str): the request, with "{prompt}" where the image's prompt goes. Default `DEFAULT_INSTRUCTION`.
        max_new_tokens (int): longest reply. Default 256.
        fallback_score (float): score of a reply without a usable one, in [0, 10]. Default 5.
        reply_fn (Callable[[PIL.Image.Image, str], str] | None): replaces generation (`reply_fn(image, request)`),
            e.g. a remote model or a scripted reply.
        cache_size (int): replies kept (by image content and prompt). Default 1024.
        name (str): default "VLM".
    """

    def __init__(
        self,
        model=None,
        processor=None,
        instruction: str = DEFAULT_INSTRUCTION,
        max_new_tokens: int = 256,
        fallback_score: float = 5.0,
        reply_fn: Callable[[PIL.Image.Image, str], str] | None = None,
        cache_size: int = 1024,
        name: str = "VLM",
    ):
        if reply_fn is None and (model is None or not callable(getattr(model, "generate", None))):
            raise ValueError(f"`model` is {type(model).__name__}; pass an image-text-to-text model (or a `reply_fn`).")
        if reply_fn is None and getattr(processor, "chat_template", None) is None:
            raise ValueError(
                f"`processor` is a {type(processor).__name__} without a chat template; pass the processor of an "
                "instruction-tuned (chat) model, or set processor.chat_template."
            )
        if reply_fn is not None and not callable(reply_fn):
            raise ValueError(f"`reply_fn` is {reply_fn!r}; pass a function (image, request) -> reply text, or None.")
        if not isinstance(instruction, str) or "{prompt}" not in instruction:
            raise ValueError(
                f"`instruction` is {instruction!r}; pass a string with '{{prompt}}' where the prompt goes."
            )
        for arg, value in (("max_new_tokens", max_new_tokens), ("cache_size", cache_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` is {value!r}; pass an int >= 1.")
        low, high = SCORE_RANGE
        if (
            isinstance(fallback_score, bool)
            or not isinstance(fallback_score, (int, float))
            or not low <= fallback_score <= high
        ):
            raise ValueError(f"`fallback_score` is {fallback_score!r}; pass a number in [{low:g}, {high:g}], e.g. 5.")
        self.model, self.processor, self.instruction = model, processor, instruction
        self.max_new_tokens, self.fallback_score, self.reply_fn = max_new_tokens, float(fallback_score), reply_fn
        self.cache_size, self.name, self._cache = cache_size, name, OrderedDict()

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, **kwargs):
        """A `VLMCritic` from a local model folder (`AutoProcessor` + `AutoModelForImageTextToText`, offline).

        Args:
            path (str | PathLike): the model folder.
            device, dtype: where and in what precision it runs. Default the CPU, float32.
            **kwargs: the other arguments of `VLMCritic`.

        Raises:
            FileNotFoundError: no model at `path` (names it and where to download one).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = require_folder(path, VLM_SOURCE)
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=dtype)
        return cls(model.to(device).eval(), processor, **kwargs)

    def request(self, prompt: str) -> str:
        """The instruction for one image's prompt."""
        return self.instruction.replace("{prompt}", prompt)

    @torch.no_grad()
    def reply(self, image: PIL.Image.Image, prompt: str) -> str:
        """The model's greedy reply for one image and its prompt (or `reply_fn`'s)."""
        if self.reply_fn is not None:
            return str(self.reply_fn(image, self.request(prompt)))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.request(prompt)}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        param = next(self.model.parameters())
        inputs = self.processor(images=[image], text=[text], return_tensors="pt").to(param.device, param.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)  # (1, L + new)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]

    def review(self, images, prompts: Sequence[str]) -> list[Review]:
        """One `Review` per (image, prompt) pair, cached by image content and prompt."""
        prompts, out = check_pairs(images, prompts), []
        for image, prompt in zip(to_pil(images), prompts):
            key = _key(image, prompt)
            if key not in self._cache:
                self._cache[key] = parse_reply(self.reply(image, prompt), prompt, self.fallback_score)
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            out.append(self._cache[key])
        return out

    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 ratings in [0, 10] (the fallback score where a reply had none)."""
        return torch.tensor([r.score for r in self.review(images, prompts)], dtype=torch.float32)

    def suggest(self, images, prompts: Sequence[str]) -> list[Suggestion | None]:
        """The VLM's suggestion per pair, or None."""
        return [r.suggestion for r in self.review(images, prompts)]
