"""Generate images for a prompt list into a folder, resumably.

    out/images/00012-1.png     image 1 of prompt 12
    out/generations.jsonl      one line per image: file, prompt, prompt index, image index, seed

Image k of a prompt is drawn with its own generator, seeded `image_seed(seed, prompt, k)` (`sampling.seeds`, the
seed of every generation path: `discadapt demo` draws a prompt's images with the same noise), so the images depend
neither on the batching nor on the prompt's place in the list (a prompt listed twice gets the same images twice; ask
for more with `images_per_prompt`). An interrupted run continues where it stopped: images already written (each
written atomically, `io.write_atomic`) are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from ..io import clean_temporary, write_atomic
from .seeds import image_generators, image_seed

__all__ = ["generate_to_folder"]


def _image_path(out: Path, prompt_index: int, image_index: int) -> Path:
    return out / "images" / f"{prompt_index:05d}-{image_index}.png"


def generate_to_folder(
    pipe,
    prompts: list[str],
    out: str | os.PathLike,
    *,
    images_per_prompt: int = 1,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
    **pipe_kwargs,
) -> list[dict]:
    """Generate `images_per_prompt` images for each prompt with `pipe` (a pipeline or `SelfCorrectingPipeline`).

    Args:
        pipe: called as `pipe(prompt=list, generator=list, **pipe_kwargs)`, returning PIL images.
        prompts (`list[str]`): the prompts.
        out (`str` or `os.PathLike`): output folder (created).
        images_per_prompt (`int`, defaults to 1), batch_size (`int`, defaults to 4): prompts per pipeline call.
        seed (`int`, defaults to 0): the run's seed; image k of prompt p uses `image_seed(seed, p, k)`.
        progress (`bool`, defaults to True): show a progress bar.
        **pipe_kwargs: e.g. `num_inference_steps`, `guidance_scale`.

    Returns:
        `list[dict]`: the records written to `generations.jsonl`, one per image.
    """
    if not prompts:
        raise ValueError("`prompts` is empty; pass at least one prompt.")
    if images_per_prompt < 1 or batch_size < 1:
        raise ValueError(f"`images_per_prompt` ({images_per_prompt}) and `batch_size` ({batch_size}) must be >= 1.")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    clean_temporary(out / "images")  # what a killed run left
    n = images_per_prompt
    todo = [i for i in range(len(prompts)) if not all(_image_path(out, i, k).exists() for k in range(n))]
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="generating", unit="batch"):
        batch = todo[start : start + batch_size]
        generators = image_generators([image_seed(seed, prompts[i], k) for i in batch for k in range(n)])
        images = pipe(
            prompt=[prompts[i] for i in batch], num_images_per_prompt=n, generator=generators, **pipe_kwargs
        ).images
        for j, image in enumerate(images):
            write_atomic(_image_path(out, batch[j // n], j % n), lambda tmp, image=image: image.save(tmp, format="PNG"))
    records = [
        {
            "file": str(_image_path(out, i, k).relative_to(out)),
            "prompt": p,
            "prompt_index": i,
            "image": k,
            "seed": image_seed(seed, p, k),
        }
        for i, p in enumerate(prompts)
        for k in range(n)
    ]
    write_atomic(out / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return records
