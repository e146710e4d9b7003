"""A folder of images with a captions file.

Captions file formats (UTF-8; blank lines skipped; `file_name` is relative to the folder, subfolders allowed;
an image may appear on several lines, one item per line):

- `.jsonl`: one JSON object a line, `{"file_name": "0001.png", "caption": "a red cube"}` (other keys ignored).
  Hugging Face `imagefolder`'s `metadata.jsonl` is read with `caption_column="text"` when its captions are in `text`.
- `.txt` or `.tsv`: one `file_name<TAB>caption` a line, no header (the caption is everything after the first tab).
- `.csv`: comma-separated with a header row naming the `file_name` and caption columns, quoted as Python's `csv`
  module writes it (as Hugging Face `imagefolder`'s `metadata.csv`).

Without `captions`, the folder must hold exactly one of `captions.jsonl`, `captions.txt`, `captions.tsv`,
`captions.csv`, `metadata.jsonl`, `metadata.csv`.

Items: `{"image": PIL RGB, "caption": str, "file_name": str}` in file order.

Example:
    >>> data = CaptionedFolder("my_images")  # reads my_images/captions.jsonl
    >>> data[0]["caption"]
    'a red cube'
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from torch.utils.data import Dataset

from ._files import check_file, check_images_exist, load_rgb

__all__ = ["CaptionedFolder", "CAPTION_FILES"]

CAPTION_FILES = ("captions.jsonl", "captions.txt", "captions.tsv", "captions.csv", "metadata.jsonl", "metadata.csv")


def _find_captions(root: Path) -> Path:
    found = [root / name for name in CAPTION_FILES if (root / name).is_file()]
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise ValueError(
            f"`root` {str(root)!r} holds {what} of the captions files {list(CAPTION_FILES)}; add one, or pass "
            "`captions` to pick one."
        )
    return found[0]


def _read_jsonl(text: str, path: Path, column: str) -> list[tuple[str, str]]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("file_name"), str)
            or not isinstance(entry.get(column), str)
        ):
            raise ValueError(
                f"`captions` {str(path)!r} line {n} is {line[:80]!r}; each line must be a JSON object with string "
                f'"file_name" and "{column}" (`caption_column`).'
            )
        rows.append((entry["file_name"], entry[column]))
    return rows


def _read_tsv(text: str, path: Path) -> list[tuple[str, str]]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, tab, caption = line.partition("\t")
        if not tab or not name:
            raise ValueError(f"`captions` {str(path)!r} line {n} is {line[:80]!r}; write `file_name<TAB>caption`.")
        rows.append((name, caption.rstrip()))
    return rows


def _read_csv(text: str, path: Path, column: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "file_name" not in reader.fieldnames or column not in reader.fieldnames:
        raise ValueError(
            f"`captions` {str(path)!r} has header {reader.fieldnames!r}; it needs the columns 'file_name' and "
            f"{column!r} (`caption_column`)."
        )
    return [(row["file_name"], row[column]) for row in reader if row["file_name"]]


class CaptionedFolder(Dataset):
    """Images of a folder with their captions (formats in the module docstring).

    Args:
        root (`str` or `os.PathLike`): the folder; `file_name`s are relative to it.
        captions (`str`, `os.PathLike` or `None`, defaults to `None`): the captions file; `None` looks for one of
            `CAPTION_FILES` in `root`. Its suffix picks the format.
        caption_column (`str`, defaults to `"caption"`): the caption key of `.jsonl` and column of `.csv` files.

    Every listed image must exist when the dataset is built; none is opened until an item is read.

    Example:
        >>> data = CaptionedFolder("images", captions="images/metadata.jsonl", caption_column="text")
    """

    def __init__(
        self, root: str | os.PathLike, captions: str | os.PathLike | None = None, caption_column: str = "caption"
    ):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"`root` is {str(root)!r}, which is not a folder; pass the folder holding the images.")
        path = _find_captions(root) if captions is None else check_file(captions, "captions")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"`captions` {str(path)!r} is not UTF-8 text ({err}); save the captions file as UTF-8."
            ) from None
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = _read_jsonl(text, path, caption_column)
        elif suffix in (".txt", ".tsv"):
            rows = _read_tsv(text, path)
        elif suffix == ".csv":
            rows = _read_csv(text, path, caption_column)
        else:
            raise ValueError(f"`captions` is {str(path)!r}; its suffix must be .jsonl, .txt, .tsv or .csv.")
        if not rows:
            raise ValueError(f"`captions` {str(path)!r} lists no images; the dataset is empty.")
        empty = [name for name, caption in rows if not caption.strip()]
        if empty:
            raise ValueError(
                f"`captions` {str(path)!r} gives {len(empty)} image(s) an empty caption (e.g. {empty[0]!r}); write a "
                "caption for each, or remove their lines."
            )
        self.rows = rows
        self.paths = check_images_exist([name for name, _ in rows], root, "captions")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        name, caption = self.rows[index]
        return {"image": load_rgb(self.paths[index]), "caption": caption, "file_name": name}
