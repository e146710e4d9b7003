"""What a bench run keeps on disk: `manifest.json` (the run's configuration) and one file per method and batch.

- `Manifest(out_dir, config, resume)`: checks `out_dir/manifest.json` against `config` (a run of another
  configuration is refused, naming the first difference) or clears an earlier run (`resume=False`), then writes it.
- `save_batch` / `load_batch`: `out_dir/batches/method<j>/<b>.npz`, written atomically: images, the judge's verdicts,
  each metric's scores and the method's seconds. A batch is finished when its file exists; a missing, torn or
  incomplete file reads as None (drawn again).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..io import write_atomic

__all__ = ["MANIFEST", "Batch", "Manifest", "Verdict", "batch_file", "first_difference", "load_batch", "save_batch"]

MANIFEST = "manifest.json"


def first_difference(old, new, path: str = "") -> str | None:
    """Where two JSON values differ, as `key.sub: old there, new now`; None if equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(dict.fromkeys([*old, *new])):
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if old != new:
        show = lambda v: repr(v) if len(repr(v)) < 80 else repr(v)[:77] + "..."  # noqa: E731
        return f"{path or 'configuration'}: {show(old)} there, {show(new)} now"
    return None


class Manifest:
    """`out_dir/manifest.json`: the run's configuration. A batch is finished when its file exists (written
    atomically, with its images, verdicts, scores and seconds), so processes sharing `out_dir` need no shared log."""

    def __init__(self, out_dir: Path, config: dict, resume: bool, main: bool = True):
        self.path, self.config = out_dir / MANIFEST, config
        if self.path.exists() and resume:
            found = json.loads(self.path.read_text(encoding="utf-8"))
            difference = first_difference(found["config"], config)
            if difference:
                raise ValueError(
                    f"`out_dir` {out_dir} holds a run of another configuration ({difference}); pass another "
                    "`out_dir`, or start it afresh (`resume=False`, `discadapt demo --restart`)."
                )
        elif (out_dir / "batches").exists() and main:
            shutil.rmtree(out_dir / "batches")  # an earlier run's images, discarded (resume=False)
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps({"config": config}, indent=1) + "\n")


def batch_file(out_dir: Path, j: int, b: int) -> Path:
    return out_dir / "batches" / f"method{j:02d}" / f"{b:05d}.npz"


def save_batch(path: Path, images: np.ndarray, verdicts: list | None, scores: list, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": images, "seconds": np.array(seconds, dtype=np.float64)}
    if verdicts is not None:
        arrays["ok"] = np.array([bool(v.ok) for v in verdicts])
        arrays["marginal"] = np.array([bool(v.marginal) for v in verdicts])
        arrays["reason"] = np.array([str(v.reason) for v in verdicts], dtype=str)
    arrays.update({f"score{k}": np.asarray(v, dtype=np.float64) for k, v in enumerate(scores)})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(path, write)


class Verdict:
    """A verdict read back from a batch file."""

    __slots__ = ("ok", "reason", "marginal")

    def __init__(self, ok: bool, reason: str, marginal: bool):
        self.ok, self.reason, self.marginal = ok, reason, marginal


class Batch:
    """One method's batch read back: images, verdicts (None without a judge), scores per metric, seconds."""

    def __init__(self, images: np.ndarray, verdicts: list | None, scores: list[np.ndarray], seconds: float):
        self.images, self.verdicts, self.scores, self.seconds = images, verdicts, scores, seconds


def load_batch(path: Path, judged: bool, n_metrics: int) -> Batch | None:
    """The batch in `path`, or None where it is missing, damaged, or lacks what this suite scores (redone)."""
    needed = ["images", "seconds", *(["ok", "reason", "marginal"] if judged else [])]
    needed += [f"score{k}" for k in range(n_metrics)]
    try:
        with np.load(path) as found:
            if not all(key in found.files for key in needed):
                return None
            verdicts = None
            if judged:
                rows = zip(found["ok"], found["reason"], found["marginal"])
                verdicts = [Verdict(bool(o), str(r), bool(m)) for o, r, m in rows]
            scores = [found[f"score{k}"] for k in range(n_metrics)]
            return Batch(found["images"], verdicts, scores, float(found["seconds"]))
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
