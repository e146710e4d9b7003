"""Loading pipelines and LoRAs from user paths: offline, from safetensors only, with errors that name the path and
the fix before diffusers reads anything.

- `load_pipeline(path)`: a diffusers pipeline folder (`model_index.json` and a subfolder per component), loaded with
  `local_files_only=True, use_safetensors=True`. A missing or empty folder, a component folder the index lists but
  the folder lacks, and a component whose weights are only pickled (`.bin`, `.pt`, `.ckpt`: unpickling a file can run
  code) are refused with a ValueError.
- `load_lora(pipe, path)`: a LoRA written by `save_lora_weights` (a folder, or its `.safetensors` file), loaded into
  `pipe` with `use_safetensors=True`; a missing path or a pickled-only folder is refused the same way.

`discadapt generate`, `inspect`, `probe`, `tune` and `demo` load user paths through these.

Example:
    >>> pipe = load_pipeline("/models/stable-diffusion-v1-5")  # doctest: +SKIP
    >>> load_lora(pipe, "runs/tune/lora")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["load_lora", "load_pipeline"]

PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_CONVERT = "convert it where you trust it: load it and save it again with safe_serialization=True (the default)"


def _pickled_only(folder: Path) -> list[str]:
    """Names of pickled weight files in `folder` when it holds no `.safetensors` file, else []."""
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.name.endswith(".safetensors") for p in files):
        return []
    return sorted(p.name for p in files if p.suffix in PICKLED)


def _check_pipeline_folder(path: Path, arg: str) -> None:
    if not path.is_dir():
        what = "a file" if path.exists() else "not an existing folder"
        raise ValueError(f"`{arg}` is {str(path)!r}, which is {what}; pass a diffusers pipeline folder.")
    index = path / "model_index.json"
    if not index.is_file():
        found = sorted(p.name for p in path.iterdir())[:8]
        raise ValueError(
            f"`{arg}` {str(path)!r} has no model_index.json (it holds {found or 'nothing'}); pass a diffusers "
            "pipeline folder, as `save_pretrained` writes it."
        )
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"`{arg}` {str(index)!r} is not valid JSON ({err}); write the pipeline again.") from None
    for name, value in components.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue  # metadata, settings, or a component saved as None
        folder = path / name
        if not folder.is_dir():
            raise ValueError(
                f"`{arg}` {str(path)!r} lacks the folder {name}/ that its model_index.json lists; copy the whole "
                "pipeline folder."
            )
        pickled = _pickled_only(folder)
        if pickled:
            raise ValueError(
                f"`{arg}` {str(folder)!r} holds only pickled weights ({', '.join(pickled)}); discadapt loads "
                f"safetensors only, as unpickling a file can run code: {_CONVERT}."
            )


def load_pipeline(path: str | os.PathLike, arg: str = "--pipeline"):
    """The diffusers pipeline in folder `path`, loaded offline from safetensors (see the module docstring).

    Args:
        path (str | PathLike): the pipeline folder.
        arg (str): the argument that gave `path`, named in errors. Default "--pipeline".

    Raises:
        ValueError: `path` is not a pipeline folder, lacks a component, holds pickled weights only, or does not load
            (naming the path and the loader's error).
    """
    from diffusers import DiffusionPipeline

    path = Path(path)
    _check_pipeline_folder(path, arg)
    try:
        return DiffusionPipeline.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        raise ValueError(
            f"`{arg}` {str(path)!r} does not load as a diffusers pipeline ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); check that the folder is complete."
        ) from err


def load_lora(pipe, path: str | os.PathLike, arg: str = "--lora") -> None:
    """Load the LoRA at `path` (a `save_lora_weights` folder, or its `.safetensors` file) into `pipe`.

    Args:
        pipe (DiffusionPipeline): a pipeline with `load_lora_weights`.
        path (str | PathLike): the LoRA folder or file.
        arg (str): the argument that gave `path`, named in errors. Default "--lora".

    Raises:
        ValueError: `path` does not exist, holds no `.safetensors` LoRA (or only pickled weights), holds several, or
            does not fit `pipe` (naming the path and the loader's error).
    """
    path = Path(path)
    if path.is_file():
        if not path.name.endswith(".safetensors"):
            raise ValueError(
                f"`{arg}` is {str(path)!r}, not a .safetensors file; discadapt loads LoRA weights from safetensors "
                f"only, as unpickling a file can run code: {_CONVERT}."
            )
        folder, weight = path.parent, path.name
    elif path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        pickled = _pickled_only(path)
        if pickled:
            raise ValueError(
                f"`{arg}` {str(path)!r} holds only pickled weights ({', '.join(pickled)}); discadapt loads LoRA "
                f"weights from safetensors only, as unpickling a file can run code: {_CONVERT}."
            )
        if not found:
            raise ValueError(
                f"`{arg}` {str(path)!r} holds no .safetensors file; pass the folder `save_lora_weights` wrote (e.g. "
                "`discadapt tune`'s out/lora)."
            )
        if len(found) > 1 and "pytorch_lora_weights.safetensors" not in found:
            raise ValueError(f"`{arg}` {str(path)!r} holds several .safetensors files {found}; pass the file itself.")
        folder, weight = path, "pytorch_lora_weights.safetensors" if len(found) > 1 else found[0]
    else:
        raise ValueError(
            f"`{arg}` is {str(path)!r}, which does not exist; pass the folder `save_lora_weights` wrote (e.g. "
            "`discadapt tune`'s out/lora)."
        )
    try:
        pipe.load_lora_weights(str(folder), weight_name=weight, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ValueError(
            f"`{arg}` {str(folder / weight)!r} does not load into this pipeline ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); pass a LoRA trained for this pipeline."
        ) from err
