"""Methods: what the runner compares. A method turns N prompts and N seeds (one per image) into N images.

    Method = (prompts: list[str], seeds: list[int]) -> (N, S, S, 3) uint8

`pipeline_method(pipe, steps, guidance)` is the method of a diffusers text-to-image pipeline: one
`torch.Generator` per image seeded with its seed (`sampling.seeds`, the seeds of `discadapt generate` too), so an
image depends on its prompt and seed, not on the batch. `hard_negative_method(pipe, negatives_of, ...)` is the same
under `sampling.contrast.HardNegativeGuidance`, each prompt's negatives from `negatives_of`. Any other function of
that signature is a method (a self-correcting pipeline wrapped by `pipeline_method`, a renderer, a constant image
for tests).

Example:
    >>> from discadapt.bench.methods import pipeline_method
    >>> generate = pipeline_method(pipe, steps=25, guidance=4.0)  # doctest: +SKIP
    >>> generate(["a red circle"], [0]).shape  # doctest: +SKIP
    (1, 32, 32, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..sampling.checks import check_guidance, check_steps, finite_images
from ..sampling.seeds import image_generators

__all__ = ["Method", "check_images", "hard_negative_method", "pipeline_method"]

Method = Callable[[list[str], list[int]], np.ndarray]
"""`(prompts, seeds) -> images`: N prompts and N seeds (one per image) to `(N, S, S, 3)` uint8 images."""


def pipeline_method(pipe, steps: int = 25, guidance: float = 4.0, **pipe_kwargs) -> Method:
    """The method of a text-to-image pipeline: `pipe` called on a batch of prompts with one seeded generator per image.

    Args:
        pipe (DiffusionPipeline): a text-to-image pipeline (`unet.config.sample_size * vae_scale_factor` is the
            image side), or a `SelfCorrectingPipeline`.
        steps (int): sampler steps, >= 1. Default 25.
        guidance (float): classifier-free guidance scale, finite and >= 0 (<= 1 turns it off). Default 4.0.
        **pipe_kwargs: further arguments of `pipe(...)`, e.g. `eta`.

    Returns:
        Method: `(prompts, seeds) -> (N, S, S, 3)` uint8 images; it raises `sampling.checks.NonFiniteImageError`
        (naming the prompts) when an image holds NaN or infinite values, so none is judged or saved.

    Raises:
        ValueError: `steps` is not an int >= 1, or `guidance` not a finite number >= 0.

    Example:
        >>> generate = pipeline_method(pipe, steps=10)  # doctest: +SKIP
        >>> generate(["a red circle"], [0]).shape  # doctest: +SKIP
        (1, 32, 32, 3)
    """
    import torch

    steps, guidance = check_steps(steps), check_guidance(guidance)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor

    def generate(prompts: list[str], seeds: list[int]) -> np.ndarray:
        with torch.no_grad():
            images = pipe(
                list(prompts),
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=image_generators(seeds),
                output_type="np",
                **pipe_kwargs,
            ).images  # (N, S, S, 3) float in [0, 1]
        return finite_images(images, prompts)

    return generate


def hard_negative_method(
    pipe, negatives_of: Callable[[str], Sequence[str]], steps: int = 25, guidance: float = 4.0, **settings
) -> Method:
    """`pipeline_method(pipe, steps, guidance)` with each prompt's images pushed away from `negatives_of(prompt)`
    (`sampling.contrast.HardNegativeGuidance`; `settings`: its `scale`, `start`, `stop`, checked here)."""
    from ..sampling.contrast import HardNegativeGuidance

    HardNegativeGuidance(pipe, [[]], **settings)  # checks the settings now rather than at the first batch
    generate = pipeline_method(pipe, steps, guidance)

    def guided(prompts: list[str], seeds: list[int]) -> np.ndarray:
        with HardNegativeGuidance(pipe, [list(negatives_of(p)) for p in prompts], **settings):
            return generate(prompts, seeds)

    return guided


def check_images(name: str, images, n: int, min_size: int = 1) -> np.ndarray:
    """`images` if it is a `(n, S, S, 3)` uint8 array with S >= `min_size`, else a ValueError naming method `name`."""
    shape = getattr(images, "shape", None)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n:
        raise ValueError(
            f"method {name!r} returned {type(images).__name__} of shape {shape} and dtype "
            f"{getattr(images, 'dtype', None)} for {n} prompts; return a (N, S, S, 3) uint8 array, N = {n}."
        )
    if images.shape[3] != 3 or images.shape[1] != images.shape[2] or images.shape[1] < min_size:
        raise ValueError(
            f"method {name!r} returned images of shape {images.shape}; return (N, S, S, 3), S >= {min_size}."
        )
    return images
