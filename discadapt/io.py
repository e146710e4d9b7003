"""Atomic writes: a file or a folder appears complete or not at all, also when the process is killed midway.

Everything discadapt writes that a later run reads back (checkpoints, logs, results, images, bundles, caches) goes
through these two functions: the content is written under a temporary name in the same folder, then renamed with
`os.replace`, which is atomic on POSIX and Windows within one file system.

- `write_atomic(path, data)`: text or bytes, or a function that writes the file at the path it is given (e.g.
  `PIL.Image.save`, `safetensors.torch.save_file`, `torch.save`).
- `replace_dir(path, write)`: a folder filled by `write(tmp_folder)`, then swapped in; an older folder at `path`
  is replaced, never left half-written.

Leftovers of killed writers are hidden files starting with "." and ending in ".tmp"; `clean_temporary(folder)`
removes them.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> write_atomic(root / "a.json", '{"step": 3}')
    >>> (root / "a.json").read_text()
    '{"step": 3}'
    >>> replace_dir(root / "model", lambda tmp: (tmp / "w.bin").write_bytes(b"x")).name
    'model'
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["clean_temporary", "replace_dir", "write_atomic"]


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[Path], object], mode: int = 0o644) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`.

    Args:
        path (str | PathLike): the file to write; its folder must exist.
        data (str | bytes | Callable[[Path], object]): text (UTF-8), bytes, or a function writing the file at the
            path it is given.
        mode (int): permissions of the file. Default 0o644 (readable by all, as the files of a pip install).
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, (bytes, bytearray)):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_dir(path: str | os.PathLike, write: Callable[[Path], object], mode: int = 0o755) -> Path:
    """Fill a temporary folder beside `path` with `write(folder)`, then put it at `path` (replacing an older one).

    Args:
        path (str | PathLike): the folder to create or replace; its parent is created.
        write (Callable[[Path], object]): writes the folder's content (e.g. `model.save_pretrained`).
        mode (int): permissions of the folder and its files' folders. Default 0o755.

    Returns:
        Path: `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = _temporary(path)
    try:
        write(tmp)
        for folder, _, files in os.walk(tmp):  # mkdtemp and some writers create them private
            os.chmod(folder, mode)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


def clean_temporary(folder: str | os.PathLike) -> None:
    """Remove what killed writers left in `folder`: hidden files and folders ending in ".tmp"."""
    for leftover in Path(folder).glob(".*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
