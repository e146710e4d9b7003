"""The run folder of every trainer: the record of what a run is, atomic checkpoints, the step log and the outputs.

Layout of a run folder:

    train_config.json            {"format", "version", "objective", "config": {...}, "run": {...}}
    log.jsonl                    one JSON line per logged step: step, losses, lr, seconds (and the phase, if any)
    checkpoints/step-NNNNNNNN/
        trainable.safetensors    every parameter that trains, float32, by name
        optimizer.pt             the optimizer's state_dict (read back with weights_only=True)
        state.safetensors        the objective's own tensors (e.g. EMA weights), when it has any
        state.json               {"step": N, "meta": the objective's own JSON values (e.g. a latent scale)}
    <output>/                    what the objective writes at the end (adapter/, lora/, pipeline/, model/), each with
                                 a `train_step.json` marker {"step": N, ...}

Everything is written through `discadapt.io` (a temporary name, then `os.replace`), so `checkpoints/` only ever
holds complete checkpoints and an output folder is the old one or the new one, never a mix. A folder is resumed only
with the same objective, configuration (but the `resumable` fields), data and number of processes: `RunDir.check`
raises a ValueError naming the differences before anything is written.

Example:
    >>> run = RunDir("runs/probe")
    >>> checkpoint = run.check(record, resume=True, steps=1000)  # None for a new run
    >>> run.start(record, step=0)                                # record written, stale log lines dropped
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io import clean_temporary, replace_dir, write_atomic

__all__ = ["FORMAT", "Checkpoint", "RunDir", "dataset_fingerprint", "module_fingerprint", "write_output"]

FORMAT = "discadapt.train"
VERSION = 2
RECORD = "train_config.json"
LOG = "log.jsonl"
MARKER = "train_step.json"
_SHOWN = 8  # differing fields named in a refusal


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's config, parameter names, shapes and the first 1024 values of each tensor (float32)."""
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "to_dict"):  # transformers' PretrainedConfig
        config = config.to_dict()
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")} if config is not None else {}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().flatten()[:1024].to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset) -> dict:
    """What identifies a dataset in a run record: its type, length and, when it has one, its `fingerprint`."""
    return {
        "type": type(dataset).__name__,
        "length": len(dataset),
        "fingerprint": getattr(dataset, "fingerprint", None),
    }


def _flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        flat = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint holds.

    Attributes:
        step (int): optimizer steps done.
        trainable (dict[str, torch.Tensor]): every trained parameter, by name.
        optimizer (dict): the optimizer's `state_dict()`.
        state (dict[str, torch.Tensor]): the objective's own tensors (EMA weights, ...); may be empty.
        meta (dict): the objective's own JSON values (a latent scale, EMA counters, ...); may be empty.
    """

    step: int
    trainable: dict
    optimizer: dict
    state: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)


def _step_of(folder: Path) -> int:
    return int(folder.name.split("-")[1])


class RunDir:
    """A run folder (layout in the module docstring).

    Args:
        path (str | PathLike): the folder; created by `start`, not before.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.record_path = self.path / RECORD
        self.log_path = self.path / LOG
        self.checkpoint_root = self.path / "checkpoints"

    # ---- reading -------------------------------------------------------------------------------------------------
    def record(self) -> dict | None:
        """The saved record, or None for a new folder."""
        if not self.record_path.is_file():
            return None
        return json.loads(self.record_path.read_text(encoding="utf-8"))

    def checkpoints(self) -> list[Path]:
        """The complete checkpoint folders, oldest first."""
        return sorted(self.checkpoint_root.glob("step-*")) if self.checkpoint_root.is_dir() else []

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def load_checkpoint(self, folder: Path | None = None, device: str | torch.device = "cpu") -> Checkpoint:
        """The checkpoint in `folder` (default: the newest), tensors on `device`.

        Raises:
            FileNotFoundError: the run has no checkpoint.
        """
        folder = self.latest() if folder is None else Path(folder)
        if folder is None:
            raise FileNotFoundError(f"no checkpoint under {self.checkpoint_root}; train the run first.")
        saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        state = folder / "state.safetensors"
        return Checkpoint(
            step=saved["step"],
            trainable=load_file(folder / "trainable.safetensors", device=str(device)),
            optimizer=torch.load(folder / "optimizer.pt", map_location=device, weights_only=True),
            state=load_file(state, device=str(device)) if state.is_file() else {},
            meta=saved.get("meta", {}),
        )

    def output_step(self, name: str) -> int | None:
        """The step recorded in output folder `name`'s marker, or None when there is no such output."""
        marker = self.path / name / MARKER
        return json.loads(marker.read_text(encoding="utf-8"))["step"] if marker.is_file() else None

    # ---- checking ------------------------------------------------------------------------------------------------
    def check(
        self, record: dict, resume: bool, steps: int, resumable: Sequence[str] = (), steps_name: str = "steps"
    ) -> Path | None:
        """Check that this folder may receive the run `record`; return the checkpoint to resume from, or None.
        Nothing is written.

        Args:
            record (dict): `{"objective": str, "config": dict, "run": dict}`.
            resume (bool): an existing run may be continued (else it is refused).
            steps (int): the run's optimizer steps; a newer checkpoint is refused.
            resumable (Sequence[str]): `config` fields a resumed run may change.
            steps_name (str): the argument that sets `steps`, named in the error. Default "steps".

        Raises:
            ValueError: the folder holds a run and `resume` is False; or another run (naming the fields that
                differ); or a checkpoint past `steps`.
        """
        checkpoint, saved = self.latest(), self.record()
        if saved is None and checkpoint is None:
            return None
        if not resume:
            at = f" at step {_step_of(checkpoint)}" if checkpoint else ""
            raise ValueError(
                f"`out_dir` {str(self.path)!r} already holds a training run{at}; pass resume=True (--resume) to "
                "continue it, or a new `out_dir`."
            )
        if saved is not None:
            self._check_record(saved, record, resumable)
        if checkpoint is not None and _step_of(checkpoint) > steps:
            raise ValueError(
                f"`{steps_name}` is {steps}, but {str(self.path)!r} already holds {_step_of(checkpoint)} steps; pass "
                "at least that many, or a new `out_dir`."
            )
        return checkpoint

    def _check_record(self, saved: dict, record: dict, resumable: Sequence[str]) -> None:
        if saved.get("format") != FORMAT or saved.get("version") != VERSION:
            raise ValueError(
                f"{str(self.record_path)!r} is not a discadapt training record of version {VERSION}; pass another "
                "`out_dir`."
            )
        old = _flatten({k: saved.get(k) for k in ("objective", "config", "run")})
        new = _flatten({k: record.get(k) for k in ("objective", "config", "run")})
        free = {f"config.{name}" for name in resumable}
        differing = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
        if differing:
            detail = "; ".join(f"{k}: saved {old.get(k)!r}, now {new.get(k)!r}" for k in differing[:_SHOWN])
            more = f" (and {len(differing) - _SHOWN} more)" if len(differing) > _SHOWN else ""
            raise ValueError(
                f"`out_dir` {str(self.path)!r} holds a run with another configuration ({detail}{more}); pass the "
                "same settings, model and data to resume it, or a new `out_dir`. Nothing was written."
            )

    # ---- writing -------------------------------------------------------------------------------------------------
    def start(self, record: dict, step: int) -> None:
        """Create the folder, remove leftovers of killed writers, write the record and drop the log lines of steps
        after `step` (the steps a resumed run takes again)."""
        self.path.mkdir(parents=True, exist_ok=True)
        clean_temporary(self.path)
        if self.checkpoint_root.is_dir():
            clean_temporary(self.checkpoint_root)
        full = {"format": FORMAT, "version": VERSION, **record}
        write_atomic(self.record_path, json.dumps(full, indent=1))
        if self.log_path.is_file():
            lines = self.log_path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
            if len(kept) != len(lines):
                write_atomic(self.log_path, "".join(line + "\n" for line in kept))

    def save_checkpoint(self, checkpoint: Checkpoint, keep: int) -> Path:
        """Write `checkpoint` as `checkpoints/step-NNNNNNNN` atomically and keep the `keep` newest ones."""

        def write(folder: Path) -> None:
            tensors = {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in checkpoint.trainable.items()}
            save_file(tensors, folder / "trainable.safetensors")
            torch.save(checkpoint.optimizer, folder / "optimizer.pt")
            if checkpoint.state:
                state = {k: t.detach().to("cpu").contiguous() for k, t in checkpoint.state.items()}
                save_file(state, folder / "state.safetensors")
            meta = {"step": checkpoint.step, "meta": checkpoint.meta}
            (folder / "state.json").write_text(json.dumps(meta), encoding="utf-8")

        final = replace_dir(self.checkpoint_root / f"step-{checkpoint.step:08d}", write)
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old)
        return final

    def write_output(self, name: str, write: Callable[[Path], object], marker: dict) -> Path:
        """`write_output` to the folder `name` of this run."""
        return write_output(self.path / name, write, marker)


def write_output(path: str | os.PathLike, write: Callable[[Path], object], marker: dict) -> Path:
    """Replace the folder `path` atomically with what `write(folder)` writes, plus a `train_step.json` marker
    (`marker` holds at least "step": the training step the output is of)."""

    def fill(folder: Path) -> None:
        write(folder)
        (folder / MARKER).write_text(json.dumps(marker), encoding="utf-8")

    return replace_dir(path, fill)
