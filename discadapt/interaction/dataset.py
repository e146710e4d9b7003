"""One round's dataset of the interaction loop, on disk, written as the work finishes:

    round-01/
      images/00012-s3.png   candidate 3 of training prompt 12 (s: sampled from the model; r: regenerated from the
                            critic's suggestion)
      candidates.jsonl      one line per finished candidate (`Candidate`): prompt, source, seed, file, the critic's
                            score, the suggestion it was regenerated from
      kept.jsonl            the (prompt, image) pairs kept for the enhancement LoRA, with their margins
      enhance/              the LoRA's training run (`train.engine` run folder; `enhance/lora` when finished)
      holdout.json          the critic's comparison of this round's model with the previous one
      done.json             written last: the round is complete

Each image is written atomically before its line is appended, so a killed run loses at most the batch in flight; a
torn last line (the process killed while appending) is ignored when the file is read back and cut off before the
next append, and lines whose image is missing are dropped, so their candidates are drawn again with the same seeds.

`select(candidates, top_k, min_margin)` keeps, per prompt, the `top_k` best-scored candidates whose score exceeds the
mean score of that prompt's candidates by at least `min_margin` (ArtAug keeps the pairs the understanding model
prefers).

Example:
    >>> data = RoundData("runs/augment/round-01")
    >>> data.add([candidate], [image])
    >>> kept = select(data.candidates(), top_k=1, min_margin=0.0)
    >>> data.write_kept(kept)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..io import clean_temporary, write_atomic

__all__ = ["Candidate", "RoundData", "rejected_for", "select"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A generated image of a training prompt and the critic's view of it.

    Attributes:
        prompt_index (int): index of the prompt among the loop's training prompts.
        prompt (str): the prompt.
        source (str): "sample" (drawn from the model) or "suggestion" (regenerated from a suggestion).
        k (int): index among the prompt's candidates of its source.
        seed (int): the seed of its starting noise (`sampling.seeds.image_seed`).
        file (str): the image, relative to the round folder.
        score (float): the critic's score of (image, prompt).
        suggestion (dict | None): the suggestion it was regenerated from (`Suggestion.to_dict()`), or None.
        margin (float | None): score minus the mean score of its prompt's candidates (set by `select`).
    """

    prompt_index: int
    prompt: str
    source: str
    k: int
    seed: int
    file: str
    score: float
    suggestion: dict | None = None
    margin: float | None = None

    @property
    def key(self) -> tuple[int, str, int]:
        return self.prompt_index, self.source, self.k


_TAGS = {"sample": "s", "suggestion": "r"}  # file-name tag per source; "r" (regenerated): the two must differ


def image_name(prompt_index: int, source: str, k: int) -> str:
    """The image file of candidate k of `source` for prompt `prompt_index`, relative to the round folder."""
    return f"images/{prompt_index:05d}-{_TAGS[source]}{k}.png"


def _read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL file; a torn (unparseable) last line is ignored with a warning."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path} line {i + 1} is not JSON; the file is corrupt, delete the round folder.")
            logger.warning("%s: ignoring a torn last line (an interrupted write)", path)
    return rows


class RoundData:
    """The files of one round (see the module docstring).

    Args:
        folder (str | PathLike): the round folder (created).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        clean_temporary(self.folder / "images")

    def candidates(self) -> list[Candidate]:
        """The finished candidates, in the order written; those whose image is missing are dropped."""
        found = {}
        for row in _read_jsonl(self.folder / "candidates.jsonl"):
            candidate = Candidate(**row)
            if (self.folder / candidate.file).is_file():
                found[candidate.key] = candidate
        return list(found.values())

    def add(self, candidates: Sequence[Candidate], images: Sequence) -> None:
        """Write the images (PIL) atomically, then append their candidates' lines."""
        for candidate, image in zip(candidates, images, strict=True):
            write_atomic(self.folder / candidate.file, lambda tmp, image=image: image.save(tmp, format="PNG"))
        path = self.folder / "candidates.jsonl"
        if path.is_file() and not path.read_bytes().endswith(b"\n"):  # a torn last line: cut it off
            whole = path.read_bytes()
            os.truncate(path, whole.rfind(b"\n") + 1)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(dataclasses.asdict(c)) + "\n" for c in candidates))
            f.flush()
            os.fsync(f.fileno())

    def write_kept(self, kept: Sequence[Candidate]) -> None:
        write_atomic(self.folder / "kept.jsonl", "".join(json.dumps(dataclasses.asdict(c)) + "\n" for c in kept))

    def kept(self) -> list[Candidate] | None:
        """The kept pairs, or None before `write_kept`."""
        if not (self.folder / "kept.jsonl").is_file():
            return None
        return [Candidate(**row) for row in _read_jsonl(self.folder / "kept.jsonl")]

    def read_json(self, name: str) -> dict | None:
        path = self.folder / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write_json(self, name: str, data: dict) -> None:
        write_atomic(self.folder / name, json.dumps(data, indent=1))

    @property
    def done(self) -> dict | None:
        return self.read_json("done.json")


def select(candidates: Sequence[Candidate], top_k: int = 1, min_margin: float = 0.0) -> list[Candidate]:
    """Per prompt, the `top_k` highest-scored candidates whose margin (score minus the mean score of that prompt's
    candidates) is at least `min_margin`; ties are broken by the order given. Returns them with `margin` set, in
    prompt order.

    Example:
        >>> c = [Candidate(0, "a", "sample", k, 0, f"{k}.png", s) for k, s in enumerate([1.0, 3.0, 2.0])]
        >>> [(x.k, x.margin) for x in select(c, top_k=1)]
        [(1, 1.0)]
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` is {top_k!r}; pass an int >= 1 (pairs kept per prompt).")
    if isinstance(min_margin, bool) or not isinstance(min_margin, (int, float)) or min_margin != min_margin:
        raise ValueError(f"`min_margin` is {min_margin!r}; pass a number (0 keeps anything above the prompt's mean).")
    groups: dict[int, list[Candidate]] = defaultdict(list)
    for c in candidates:
        groups[c.prompt_index].append(c)
    kept = []
    for index in sorted(groups):
        group = groups[index]
        mean = sum(c.score for c in group) / len(group)
        ranked = sorted(group, key=lambda c: -c.score)  # stable: ties keep the given order
        kept += [dataclasses.replace(c, margin=c.score - mean) for c in ranked[:top_k] if c.score - mean >= min_margin]
    return kept


def rejected_for(candidates: Sequence[Candidate], kept: Sequence[Candidate]) -> list[Candidate]:
    """Per kept candidate, the lowest-scored candidate of its prompt (the first such on ties): the rejected image of
    its Diffusion-DPO pair.

    Example:
        >>> c = [Candidate(0, "a", "sample", k, 0, f"{k}.png", s) for k, s in enumerate([1.0, 3.0, 2.0])]
        >>> [x.k for x in rejected_for(c, select(c))]
        [0]
    """
    worst: dict[int, Candidate] = {}
    for c in candidates:
        if c.prompt_index not in worst or c.score < worst[c.prompt_index].score:
            worst[c.prompt_index] = c
    return [worst[c.prompt_index] for c in kept]
