"""The run folder shared by the world's trainers (`train.py`, `clip.py`): atomic checkpoints, the saved
configuration that a resumed run must match, the step log, and atomically written outputs.

Layout of a run folder: `train_config.json`, `log.jsonl` (one JSON line per step), `checkpoints/step-NNNNNNN/`
(`state.pt`, loaded with `weights_only=True`, and `config.json`), and the trainer's output folder with a
`train_step.json` marker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "check_same_config",
    "checkpoints",
    "load_newest",
    "output_step",
    "save_checkpoint",
    "save_output",
    "trim_log",
    "write_config",
]


def checkpoints(out_dir: Path) -> list[Path]:
    """The checkpoint folders of `out_dir`, oldest first."""
    root = Path(out_dir) / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def save_checkpoint(out_dir: Path, step: int, state: dict, config: dict, keep: int = 2) -> None:
    """Write `state` as `checkpoints/step-NNNNNNN` atomically (temporary folder, then `os.replace`), keeping the
    newest `keep` checkpoints."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    if final.exists():
        return
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    os.replace(tmp, final)  # atomic: a reader sees no checkpoint or a complete one
    for old in checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)


def load_newest(out_dir: str | os.PathLike, trainer: str, map_location="cpu") -> dict:
    """The state saved in the newest checkpoint of `out_dir`.

    Raises:
        FileNotFoundError: `out_dir` has no checkpoint (the message names `trainer`, the function to run first).
    """
    found = checkpoints(Path(out_dir))
    if not found:
        raise FileNotFoundError(f"no checkpoint under {Path(out_dir) / 'checkpoints'}; run {trainer} first.")
    return torch.load(found[-1] / "state.pt", map_location=map_location, weights_only=True)


def check_same_config(out_dir: Path, config: dict, resumable: Sequence[str] = ()) -> None:
    """Raise a ValueError naming every field (but the `resumable` ones) where `config` differs from the run's
    saved `train_config.json`; nothing when there is none."""
    path = Path(out_dir) / "train_config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    differing = sorted(k for k in set(saved) | set(config) if k not in resumable and saved.get(k) != config.get(k))
    if differing:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {config.get(k)!r}" for k in differing)
        raise ValueError(
            f"`out_dir` {out_dir} holds a run with another configuration ({detail}); pass the same arguments to "
            "resume it, or a new `out_dir`."
        )


def write_config(out_dir: Path, config: dict) -> None:
    """Write `train_config.json` atomically."""
    tmp = Path(out_dir) / ".train_config.json.tmp"
    tmp.write_text(json.dumps(config, indent=1))
    os.replace(tmp, Path(out_dir) / "train_config.json")


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (steps redone after resuming from the checkpoint at `step` log again)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


def output_step(path: Path) -> int | None:
    """The step recorded in an output folder's `train_step.json`, or None."""
    marker = Path(path) / "train_step.json"
    return json.loads(marker.read_text())["step"] if marker.exists() else None


def save_output(path: Path, write: Callable[[Path], None], marker: dict) -> None:
    """Replace the folder `path` atomically with what `write(folder)` writes, plus `train_step.json` = `marker`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    write(tmp)
    (tmp / "train_step.json").write_text(json.dumps(marker))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
