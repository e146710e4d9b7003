"""Judging a world pipeline with the oracle: accuracy of generated images per caption category (`evaluate_world`)
and how well the VAE keeps scenes (`reconstruction_accuracy`).

Example:
    >>> evaluate_world(load_pipeline(), n_prompts=10, steps=5)  # doctest: +SKIP
    {'single': 0.9, 'two_objects': 0.5, ...}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from ....sampling.seeds import image_generators, image_seed
from ..captions import CATEGORIES
from ..dataset import make_dataset
from ..oracle import check, detect
from ..render import render

__all__ = ["evaluate_world", "reconstruction_accuracy"]


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(n, 3, S, S) in [-1, 1] -> (n, S, S, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _object_kinds(objects) -> Counter:
    return Counter((o.color, o.shape, o.size) for o in objects)


@torch.no_grad()
def reconstruction_accuracy(vae: AutoencoderKL, n: int = 256, seed: int = 0, image_size: int = 32) -> dict:
    """How well `vae` keeps scenes: the oracle's detections on reconstructions of "test_id" scenes (all
    categories) against the scenes' objects.

    Args:
        vae (AutoencoderKL): the VAE (reconstructs from posterior means).
        n (int): scenes, >= 1. Default 256.
        seed (int): dataset seed. Default 0.
        image_size (int): image side. Default 32.

    Returns:
        dict: `kinds` (fraction whose detected (color, shape, size) multiset equals the scene's), `exact` (detected
        objects, boxes included, equal the scene's) and `caption` (fraction whose caption the oracle accepts).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` is {n!r}; pass an int >= 1.")
    examples = make_dataset(n, split="test_id", seed=seed, image_size=image_size)
    vae = vae.eval()
    device = next(vae.parameters()).device
    kinds = exact = caption = 0
    for start in range(0, n, 64):
        batch = examples[start : start + 64]
        images = np.stack([render(e.scene) for e in batch])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
        recon = _to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample)
        for e, image in zip(batch, recon):
            found = detect(image)
            kinds += _object_kinds(found) == _object_kinds(e.scene.objects)
            exact += set(found) == set(e.scene.objects)
            caption += check(image, e.caption).ok
    return {"kinds": kinds / n, "exact": exact / n, "caption": caption / n}


@torch.no_grad()
def evaluate_world(
    pipe: StableDiffusionPipeline,
    n_prompts: int = 100,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 4.0,
    categories: Sequence[str] = CATEGORIES,
    batch_size: int = 50,
) -> dict[str, float]:
    """Oracle accuracy of images generated for "test_id" captions, per caption category.

    Args:
        pipe (StableDiffusionPipeline): e.g. `StableDiffusionPipeline.from_pretrained(out_dir / "pipeline")`.
        n_prompts (int): prompts per category, >= 1. Default 100.
        seed (int): seed of prompts and sampling noise. Default 0.
        steps (int): sampler steps. Default 25.
        guidance (float): classifier-free guidance scale (> 1 uses the empty-caption branch). Default 4.0.
        categories (Sequence[str]): categories to test. Default all.
        batch_size (int): images per pipeline call. Default 50.

    Returns:
        dict[str, float]: category -> fraction of images whose caption the oracle accepts.

    Example:
        >>> evaluate_world(pipe, n_prompts=10, steps=5)  # doctest: +SKIP
        {'single': 0.3, 'two_objects': 0.0, ...}
    """
    for name, value in (("n_prompts", n_prompts), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` is {value!r}; pass an int >= 1.")
    categories = [categories] if isinstance(categories, str) else list(categories)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scores = {}
    for category in categories:
        examples = make_dataset(n_prompts, split="test_id", seed=seed, categories=[category], image_size=size)
        prompts = [e.caption.text for e in examples]
        ok = 0
        for start in range(0, n_prompts, batch_size):
            chunk = prompts[start : start + batch_size]
            g = image_generators([image_seed(seed, prompt, 0) for prompt in chunk])  # as the demo and `generate`
            images = pipe(
                chunk,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=g,
                output_type="np",
            ).images  # (n, S, S, 3) float in [0, 1]
            images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
            ok += sum(check(image, prompt).ok for image, prompt in zip(images, chunk))
        scores[category] = ok / n_prompts
    return scores
