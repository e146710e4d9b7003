"""Suites from the public prompt formats: prompt lists (T2I-CompBench, CC-500, ABC-6K) and COCO captions.

- `prompt_list_suite(paths)`: one category per file, named after it: T2I-CompBench's `color_val.txt` is category
  "color" (split "val"), Structured Diffusion's `CC-500.txt` category "CC-500"; a folder stands for its `*.txt`
  files, sorted (e.g. T2I-CompBench's `examples/dataset/`).
- `coco_suite(path)`: the captions of a COCO captions JSON, category "coco", each image's first caption.

Both read the files as they are (`data.load_prompts`: UTF-8, one prompt a line, blank lines and trailing spaces
skipped), keep file order, and take the first `limit` prompts of each category when `limit` is given. The judge and
metrics are the caller's (`bench.Suite`).

Example:
    >>> suite = prompt_list_suite(["../shared/data/prompts/t2i-compbench/color_val.txt"], metrics=[clip], limit=2)
    >>> [(p.text, p.category, p.split) for p in suite.prompts]  # doctest: +SKIP
    [('a green bench and a blue bowl', 'color', 'val'), ...]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..data import load_prompts
from ..data._files import check_file, read_json
from .suite import Prompt, Suite

__all__ = ["SPLITS", "coco_suite", "prompt_list_suite", "prompt_files"]

SPLITS = ("val", "test", "train")  # file-name suffixes read as the split: `color_val.txt` -> ("color", "val")


def _limit(limit) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"`limit` is {limit!r}; pass an int >= 1 (prompts per category), or None for all.")
    return limit


def prompt_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The prompt files of `paths`: files as given, folders as their `*.txt` files, sorted by name."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob("*.txt"))
            if not found:
                raise ValueError(f"`paths` names the folder {str(path)!r}, which has no *.txt prompt files.")
            files += found
        else:
            files.append(check_file(path, "paths"))
    if not files:
        raise ValueError("`paths` is empty; pass one or more prompt files (one prompt a line) or folders of them.")
    return files


def _category(path: Path) -> tuple[str, str]:
    """`(category, split)` of a prompt file: `color_val.txt` -> ("color", "val"), `CC-500.txt` -> ("CC-500", "all")."""
    stem = path.stem
    for split in SPLITS:
        if stem.endswith(f"_{split}"):
            return stem[: -len(split) - 1], split
    return stem, "all"


def prompt_list_suite(
    paths: Sequence[str | os.PathLike],
    judge=None,
    metrics: Sequence = (),
    images_per_prompt: int = 1,
    seed: int = 0,
    limit: int | None = None,
    name: str | None = None,
    min_image_size: int = 1,
) -> Suite:
    """A `bench.Suite` of prompt-list files, one category per file (see the module docstring).

    Args:
        paths (Sequence[str | PathLike]): prompt files (one prompt a line) or folders of `*.txt` files.
        judge (Judge | None), metrics (Sequence[Scorer]), images_per_prompt (int), seed (int), min_image_size (int):
            as `bench.Suite`.
        limit (int | None): the first `limit` prompts of each file; None: all. Default None.
        name (str | None): the suite's name; None: the files' categories joined by "+". Default None.

    Raises:
        ValueError: a missing or empty file, a folder without prompt files, two files of one category, a bad
            `limit`, or what `bench.Suite` refuses.
    """
    limit, prompts, seen = _limit(limit), [], {}
    for path in prompt_files(paths):
        category, split = _category(path)
        if category in seen:
            raise ValueError(
                f"`paths` holds two files of category {category!r} ({seen[category]} and {path}); pass one file per "
                "category."
            )
        seen[category] = path
        texts = load_prompts(path)[:limit]
        prompts += [Prompt(text, category, split) for text in texts]
    name = name or "+".join(seen)
    return Suite(name, prompts, judge, images_per_prompt, seed, min_image_size, metrics=metrics)


def coco_suite(
    path: str | os.PathLike,
    judge=None,
    metrics: Sequence = (),
    images_per_prompt: int = 1,
    seed: int = 0,
    limit: int | None = None,
    min_image_size: int = 1,
) -> Suite:
    """A `bench.Suite` of a COCO captions JSON's captions: each image's first caption, in the order of
    `annotations`, category "coco" (see the module docstring; other arguments as `prompt_list_suite`)."""
    limit, path = _limit(limit), check_file(path, "path")
    data = read_json(path, "path")
    rows = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("caption"), str) for r in rows):
        raise ValueError(
            f"`path` {str(path)!r} has no `annotations` list of {{'image_id', 'caption'}} entries; pass a COCO "
            "captions JSON (e.g. captions_val2017.json)."
        )
    first = {}
    for row in rows:
        first.setdefault(row.get("image_id", len(first)), " ".join(row["caption"].split()))
    texts = [t for t in first.values() if t][:limit]
    if not texts:
        raise ValueError(f"`path` {str(path)!r} has no captions; pass a COCO captions JSON with annotations.")
    prompts = [Prompt(text, "coco", path.stem) for text in texts]
    return Suite(path.stem, prompts, judge, images_per_prompt, seed, min_image_size, metrics=metrics)
