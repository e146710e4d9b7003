"""File helpers shared by the readers: JSON loading, up-front existence checks, RGB image loading.

Readers check that every image they list exists when they are built (a cheap `stat`, no image is opened),
and open images only when an item is read.

Example:
    >>> paths = check_images_exist(["a.png", "b.png"], root="images", arg="annotations")  # doctest: +SKIP
    >>> image = load_rgb(paths[0])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import PIL.Image

__all__ = ["read_json", "check_file", "check_images_exist", "load_rgb", "LazyImages"]

_SHOWN = 3  # missing paths named in an error message


def check_file(path: str | os.PathLike, arg: str) -> Path:
    """`path` as a `Path`, or a `ValueError` naming `arg` if it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"`{arg}` is {str(path)!r}, which is not an existing file; pass the path of the file.")
    return path


def read_json(path: str | os.PathLike, arg: str) -> Any:
    """The parsed content of the JSON file `path` (UTF-8); a `ValueError` naming `arg` if it is missing or invalid."""
    path = check_file(path, arg)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"`{arg}` file {str(path)!r} is not valid UTF-8 JSON: {error}.") from None


def check_images_exist(names: Iterable[str], root: str | os.PathLike, arg: str) -> list[Path]:
    """`root / name` for each name, after checking that all exist.

    Raises a `ValueError` naming the first few missing paths and how many are missing, so a wrong `root` shows at
    once instead of when a training run reaches the first missing image; and one naming a name that escapes `root`
    (absolute, or leading out of it through `..`): an annotation file may not point at files elsewhere.
    """
    root = Path(root)
    names = list(names)
    for name in names:
        parts = Path(os.path.normpath(name)).parts
        if Path(name).is_absolute() or (parts and parts[0] == ".."):
            raise ValueError(
                f"`{arg}` lists the image {name!r}, which escapes the image root {str(root)!r}; image names must be "
                "relative paths inside it (no leading / or ..): fix the file, or pass the right image root."
            )
    paths = [root / name for name in names]
    missing = [str(p) for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        shown = ", ".join(repr(p) for p in missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
        raise ValueError(
            f"{len(missing)} image file(s) listed in `{arg}` do not exist under image root {str(root)!r}: {shown}; "
            "check the image root and that the images were downloaded."
        )
    return paths


def load_rgb(path: str | os.PathLike) -> PIL.Image.Image:
    """The image at `path`, fully loaded and converted to RGB; a ValueError naming `path` if it cannot be read
    (truncated, corrupt, not an image)."""
    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(
            f"image {str(path)!r} cannot be read ({type(err).__name__}: {err}); replace the file, or remove it from "
            "the dataset."
        ) from None


class LazyImages(Sequence):
    """A read-only sequence of images that opens each one (as RGB) only when it is indexed.

    Args:
        paths (`Sequence[Path]`): the image files, in order.

    Example:
        >>> images = LazyImages([Path("a.png"), Path("b.png")])  # doctest: +SKIP
        >>> first = images[0]  # opens a.png now  # doctest: +SKIP
        >>> all_images = list(images)  # opens both  # doctest: +SKIP
    """

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [load_rgb(p) for p in self.paths[index]]
        return load_rgb(self.paths[index])

    def __repr__(self) -> str:
        return f"LazyImages({[p.name for p in self.paths]})"
