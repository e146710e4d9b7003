"""The one seed of a generated image: image k of a prompt gets `SeedSequence((seed, crc32(prompt), k))`.

Every generation path of discadapt draws its images with these seeds, one `torch.Generator` per image:
`discadapt generate` (`sampling.generate_to_folder`), the evaluation runner's pipeline methods
(`bench.pipeline_method`, hence `discadapt demo`). So the same prompt, seed and image index give the same starting
noise everywhere, whatever the batch, the position of the prompt in a list or the method; two methods compared on a
suite see the same noise image by image.

Example:
    >>> from discadapt.sampling.seeds import image_seed
    >>> image_seed(0, "a red circle", 0) == image_seed(0, "a red circle", 0) != image_seed(0, "a red circle", 1)
    True
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

__all__ = ["image_generators", "image_seed"]


def image_seed(seed: int, prompt: str, k: int) -> int:
    """Seed of image `k` of `prompt`: a 32-bit int from `SeedSequence((seed, crc32(prompt), k))`.

    Args:
        seed (int): the run's seed, >= 0.
        prompt (str): the prompt (its UTF-8 bytes are hashed with crc32).
        k (int): the image's index among the prompt's images, >= 0.

    Returns:
        int: in [0, 2**32).

    Example:
        >>> image_seed(0, "a red circle", 1) == image_seed(0, "a red circle", 1)
        True
    """
    return int(np.random.SeedSequence((seed, zlib.crc32(prompt.encode("utf-8")), k)).generate_state(1)[0])


def image_generators(seeds: Sequence[int], device="cpu") -> list:
    """One `torch.Generator` per image, each seeded with its seed (`image_seed`), on `device` (default "cpu").

    Example:
        >>> [g.initial_seed() for g in image_generators([3, 4])]
        [3, 4]
    """
    import torch

    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
