"""Generate images for a prompt list into a folder, resumably.

    out/images/00012-1.png     image 1 of prompt 12
    out/manifest.json          the settings, and per finished image its prompt, seed, size and sha256
    out/generations.jsonl      one line per image: file, prompt, prompt index, image index, seed

Image k of a prompt is drawn with its own generator, seeded `image_seed(seed, prompt, k)` (`sampling.seeds`, the
seed of every generation path: `discadapt demo` draws a prompt's images with the same noise), so the images depend
neither on the batching nor on the prompt's place in the list (a prompt listed twice gets the same images twice; ask
for more with `images_per_prompt`).

What an interrupted run (killed, or failed) leaves, and what a rerun into the same folder does:

- every image is written atomically (`io.write_atomic`), then entered in `manifest.json` (also written atomically)
  with its prompt, seed, size and sha256: an image counts as done only once it is in the manifest;
- a rerun with other settings (seed, images per prompt, the pipeline's arguments, the caller's `settings`) or another
  prompt at a position the folder already holds is refused before anything is written, naming the difference, so
  images are never relabelled: pass another folder. Appending prompts to the list is allowed;
- an image in the manifest is skipped only if its file has the recorded size and sha256 and PIL reads it; one that
  does not (truncated, zero bytes, missing) is drawn again, with a warning naming it;
- an image whose values are NaN or infinite (an overflow) is not written: the other images are, then
  `checks.NonFiniteImageError` names the prompts concerned.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import PIL.Image
from tqdm.auto import tqdm

from ..io import clean_temporary, write_atomic
from .checks import NonFiniteImageError, check_guidance, check_steps, non_finite, to_uint8
from .seeds import image_generators, image_seed

__all__ = ["MANIFEST", "generate_to_folder"]

MANIFEST = "manifest.json"
FORMAT = "discadapt.generate"


def _image_path(out: Path, prompt_index: int, image_index: int) -> Path:
    return out / "images" / f"{prompt_index:05d}-{image_index}.png"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_difference(old, new, path: str = "") -> str | None:
    """Where two JSON values differ, as `key: old there, new now`; None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else f"{path or 'settings'}: {old!r} there, {new!r} now"


def _check_arguments(prompts, images_per_prompt, batch_size, pipe_kwargs) -> None:
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"`prompts` is {prompts!r:.80}; pass a list of strings.")
    if not prompts:
        raise ValueError("`prompts` is empty; pass at least one prompt.")
    for name, value in (("images_per_prompt", images_per_prompt), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` is {value!r}; pass an int >= 1.")
    if "num_inference_steps" in pipe_kwargs:
        check_steps(pipe_kwargs["num_inference_steps"], "num_inference_steps")
    if "guidance_scale" in pipe_kwargs:
        check_guidance(pipe_kwargs["guidance_scale"], "guidance_scale")
    if "output_type" in pipe_kwargs:
        raise ValueError(
            "`output_type` is set by `generate_to_folder` (it checks the images before saving them as PNG); remove it."
        )


def _settings(pipe, seed: int, images_per_prompt: int, pipe_kwargs: dict, settings) -> dict:
    """What must match for a folder to be continued (JSON-ready): the seed, images per prompt, the pipeline's
    arguments, a self-correcting pipeline's `correction` and `layout` settings and the caller's `settings`. (Which
    weights a pipeline object holds is not known here: the caller names them in `settings`, as `discadapt generate`
    does.)"""
    found = {
        "seed": seed,
        "images_per_prompt": images_per_prompt,
        "pipe_kwargs": pipe_kwargs,
        **dict(settings or {}),
    }
    config = getattr(pipe, "config", None)
    correction = getattr(config, "correction", None)
    if correction is not None and getattr(pipe, "adapter", None) is not None:
        found["correction"] = dict(correction)
    if getattr(config, "layout", None):
        found["layout"] = dict(config.layout)
    return json.loads(json.dumps(found, default=repr))


class _Manifest:
    """`out/manifest.json`: the settings and the finished images (file -> prompt, seed, size, sha256)."""

    def __init__(self, out: Path, settings: dict):
        self.path, self.settings = out / MANIFEST, settings
        self.images: dict[str, dict] = {}
        if self.path.is_file():
            try:
                found = json.loads(self.path.read_text(encoding="utf-8"))
                old_settings, self.images = found["settings"], dict(found["images"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{str(self.path)!r} cannot be read ({type(err).__name__}: {err}); pass another `out` folder, or "
                    "delete this one."
                ) from None
            difference = _first_difference(old_settings, settings)
            if difference:
                raise ValueError(
                    f"`out` {str(out)!r} holds images generated with other settings ({difference}); pass another "
                    "`out` folder (--out), or delete it. Nothing was written."
                )
        elif (out / "generations.jsonl").exists() or any((out / "images").glob("*.png")):
            raise ValueError(
                f"`out` {str(out)!r} holds images but no {MANIFEST} (written by an older discadapt or another "
                "program), so they cannot be told apart from this run's; pass another `out` folder (--out)."
            )

    def check_prompts(self, out: Path, wanted: dict[str, tuple]) -> None:
        for name, (prompt, seed, *_) in wanted.items():
            entry = self.images.get(name)
            if entry is not None and (entry.get("prompt"), entry.get("seed")) != (prompt, seed):
                raise ValueError(
                    f"`out` {str(out)!r} holds {name} of prompt {entry.get('prompt')!r}, but prompt {prompt!r} now "
                    "stands at its position: the prompt list changed. Pass another `out` folder (--out), or the "
                    "same prompts (adding prompts at the end is fine). Nothing was written."
                )

    def done(self, out: Path, name: str) -> bool:
        """Whether image `name` is finished: in the manifest, with its size and sha256, readable by PIL."""
        entry, path = self.images.get(name), out / name
        if entry is None:
            return False  # not started, or written by a run killed before it updated the manifest
        problem = None
        if not path.is_file():
            problem = "is missing"
        elif path.stat().st_size != entry.get("size") or _sha256(path) != entry.get("sha256"):
            problem = f"has {path.stat().st_size} bytes and another sha256 than {MANIFEST} records"
        else:
            try:
                with PIL.Image.open(path) as image:
                    image.load()
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on a damaged file
                problem = f"cannot be read ({type(err).__name__}: {err})"
        if problem:
            warnings.warn(f"{str(path)!r} {problem}; drawing it again.", stacklevel=3)
            del self.images[name]
        return problem is None

    def add(self, out: Path, name: str, prompt: str, seed: int) -> None:
        path = out / name
        self.images[name] = {"prompt": prompt, "seed": seed, "size": path.stat().st_size, "sha256": _sha256(path)}

    def write(self) -> None:
        body = {"format": FORMAT, "version": 1, "settings": self.settings, "images": dict(sorted(self.images.items()))}
        write_atomic(self.path, json.dumps(body, indent=1) + "\n")


def generate_to_folder(
    pipe,
    prompts: list[str],
    out: str | os.PathLike,
    *,
    images_per_prompt: int = 1,
    batch_size: int = 4,
    seed: int = 0,
    progress: bool = True,
    settings: dict | None = None,
    **pipe_kwargs,
) -> list[dict]:
    """Generate `images_per_prompt` images for each prompt with `pipe` (a pipeline or `SelfCorrectingPipeline`),
    resumably (see the module docstring).

    Args:
        pipe: called as `pipe(prompt=list, generator=list, output_type="np", **pipe_kwargs)`, returning
            `(N, H, W, 3)` float images in [0, 1].
        prompts (`list[str]`): the prompts.
        out (`str` or `os.PathLike`): output folder (created).
        images_per_prompt (`int`, defaults to 1), batch_size (`int`, defaults to 4): prompts per pipeline call.
        seed (`int`, defaults to 0): the run's seed; image k of prompt p uses `image_seed(seed, p, k)`.
        progress (`bool`, defaults to True): show a progress bar.
        settings (`dict`, *optional*): JSON-ready settings of the caller that shape the images (e.g. the pipeline
            folder, a LoRA), recorded in `manifest.json`; a rerun into `out` must give the same.
        **pipe_kwargs: e.g. `num_inference_steps` (an int >= 1), `guidance_scale` (finite, >= 0).

    Returns:
        `list[dict]`: the records written to `generations.jsonl`, one per image.

    Raises:
        ValueError: a bad argument (naming it), or `out` holding images of other settings or prompts.
        NonFiniteImageError: some images hold NaN or infinite values; they were not written, the others were.
    """
    # 1. checks, and the folder's manifest: other settings or prompts are refused before anything is written
    _check_arguments(prompts, images_per_prompt, batch_size, pipe_kwargs)
    out, n = Path(out), images_per_prompt
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out` is {str(out)!r}, which is a file; pass a folder (it is created).")
    manifest = _Manifest(out, _settings(pipe, seed, n, pipe_kwargs, settings))
    wanted = {  # file -> (prompt, seed, prompt index, image index)
        str(_image_path(out, i, k).relative_to(out)): (p, image_seed(seed, p, k), i, k)
        for i, p in enumerate(prompts)
        for k in range(n)
    }
    manifest.check_prompts(out, wanted)
    (out / "images").mkdir(parents=True, exist_ok=True)
    clean_temporary(out / "images")  # what a killed run left
    # 2. what is left to draw: images not in the manifest, or whose file is damaged
    finished = {name for name in wanted if manifest.done(out, name)}  # checks every file (warning on damaged ones)
    todo = sorted({i for name, (_, _, i, _) in wanted.items() if name not in finished})
    manifest.write()
    # 3. draw, batch by batch; write each finite image, then the manifest
    failed = []
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="generating", unit="batch"):
        batch = todo[start : start + batch_size]
        generators = image_generators([image_seed(seed, prompts[i], k) for i in batch for k in range(n)])
        images = pipe(
            prompt=[prompts[i] for i in batch],
            num_images_per_prompt=n,
            generator=generators,
            output_type="np",
            **pipe_kwargs,
        ).images  # (B * n, H, W, 3) float in [0, 1]
        bad, pixels = non_finite(images), to_uint8(images)
        for j, image in enumerate(pixels):
            i, k = batch[j // n], j % n
            if bad[j]:
                failed.append(prompts[i])
                continue
            path = _image_path(out, i, k)
            write_atomic(path, lambda tmp, image=image: PIL.Image.fromarray(image).save(tmp, format="PNG"))
            manifest.add(out, str(path.relative_to(out)), prompts[i], image_seed(seed, prompts[i], k))
        manifest.write()
    # 4. the records of the finished images
    records = [
        {"file": name, "prompt": p, "prompt_index": i, "image": k, "seed": s}
        for name, (p, s, i, k) in wanted.items()
        if name in manifest.images
    ]
    write_atomic(out / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    if failed:
        raise NonFiniteImageError(failed, f"`generate_to_folder` into {str(out)!r}: ")
    return records
