"""Prompt lists: one prompt a line, as T2I-CompBench's `<category>_val.txt` and Structured Diffusion's `CC-500.txt`.

Example:
    >>> prompts = load_prompts("../shared/data/prompts/t2i-compbench/color_val.txt")
    >>> prompts[0]
    'a green bench and a blue bowl'
"""

from __future__ import annotations

import os

from ._files import check_file

__all__ = ["load_prompts"]


def load_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file, one a line.

    Args:
        path (`str` or `os.PathLike`): a UTF-8 text file (a leading byte-order mark is ignored).

    Returns:
        `list[str]`: the lines in file order, trailing whitespace (spaces, tabs, `\\r`) removed, blank lines skipped.
        Leading spaces are kept.

    Raises:
        `ValueError`: the file is missing, not UTF-8, or has no prompt.

    Example:
        >>> load_prompts("prompts.txt")  # "a red cube  \\n\\na blue ball\\n"
        ['a red cube', 'a blue ball']
    """
    path = check_file(path, "path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"`path` {str(path)!r} is not UTF-8 text ({error}); save the prompt file as UTF-8.") from None
    prompts = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(
            f"`path` {str(path)!r} has no prompts (it is empty or blank); pass a file with one prompt a line."
        )
    return prompts
