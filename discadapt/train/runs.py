"""The run folder of every trainer: the record of what a run is, atomic checkpoints, the step log and the outputs.

Layout of a run folder:

    train_config.json            {"format", "version", "objective", "config": {...}, "run": {...}}
    log.jsonl                    one JSON line per logged step: step, losses, lr, seconds (and the phase, if any)
    checkpoints/step-NNNNNNNN/
        trainable.safetensors    every parameter that trains, float32, by name
        optimizer.pt             the optimizer's state_dict (read back with weights_only=True)
        state.safetensors        the objective's own tensors (e.g. EMA weights), when it has any
        state.json               {"step": N, "meta": the objective's own JSON values (e.g. a latent scale)}
        manifest.json            written last: {"files": {name: {"size", "sha256"}}} of the files above
    <output>/                    what the objective writes at the end (adapter/, lora/, pipeline/, model/), each with
                                 a `train_step.json` marker {"step": N, ...}

Everything is written through `discadapt.io` (a temporary name, then `os.replace`), so `checkpoints/` only ever
holds complete checkpoints and an output folder is the old one or the new one, never a mix. A folder is resumed only
with the same objective, configuration (but the `resumable` fields), data and number of processes: `RunDir.check`
raises a ValueError naming the differences before anything is written.

Files damaged after they were written (a full disk, a copy cut short, bit rot) do not block a resume: a checkpoint is
used only if its files match the sizes and sha256 of its `manifest.json` (one written before manifests existed: only
if it reads back); `RunDir.check` resumes from the newest valid checkpoint with a warning naming each damaged newer
one, and `RunDir.start` removes those (the resumed run writes them again). Unreadable lines of `log.jsonl` (the last
line of a killed run, cut off mid-write) are dropped with a warning.

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
import warnings
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
CHECKSUMS = "manifest.json"  # in each checkpoint folder, written last
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder: Path) -> dict:
    """`{"files": {name: {"size", "sha256"}}}` of the files in `folder` (a checkpoint being written)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    return {"files": {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}}


class _Unreadable(ValueError):
    """A checkpoint file that does not read back; `detail` names the file and the reader's error."""

    def __init__(self, folder: Path, detail: str):
        self.detail = detail
        super().__init__(
            f"checkpoint {str(folder)!r} cannot be read: {detail}; delete the folder to resume from the checkpoint "
            "before it."
        )


def _read_checkpoint(folder: Path, device: str | torch.device) -> Checkpoint:
    """The checkpoint in `folder`; a ValueError (`_Unreadable`) naming the file that cannot be read."""
    name = "state.json"
    try:
        saved = json.loads((folder / name).read_text(encoding="utf-8"))
        step, meta = int(saved["step"]), saved.get("meta", {})
        name = "trainable.safetensors"
        trainable = load_file(folder / name, device=str(device))
        name = "optimizer.pt"
        optimizer = torch.load(folder / name, map_location=device, weights_only=True)
        name = "state.safetensors"
        state = load_file(folder / name, device=str(device)) if (folder / name).is_file() else {}
    except Exception as err:  # truncated, missing or garbled: whatever the reader raises
        raise _Unreadable(folder, f"{name}: {type(err).__name__}: {err}") from err
    return Checkpoint(step=step, trainable=trainable, optimizer=optimizer, state=state, meta=meta)


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
        try:
            return json.loads(self.record_path.read_text(encoding="utf-8"))
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(
                f"{str(self.record_path)!r} is not valid JSON ({err}); this run folder is damaged: pass a new "
                "`out_dir`, or restore the file."
            ) from None

    def checkpoints(self) -> list[Path]:
        """The checkpoint folders (`step-NNNNNNNN`), oldest first; complete when written, valid or not now."""
        if not self.checkpoint_root.is_dir():
            return []
        return sorted(p for p in self.checkpoint_root.glob("step-*") if p.is_dir() and p.name[5:].isdigit())

    def latest(self) -> Path | None:
        """The newest checkpoint folder, or None (not verified: see `latest_valid`)."""
        found = self.checkpoints()
        return found[-1] if found else None

    def damage(self, folder: str | os.PathLike) -> str | None:
        """What is wrong with checkpoint `folder` (a file missing, or of another size or sha256 than its
        `manifest.json` records; without a manifest, a file that does not read back), or None if it is valid."""
        folder = Path(folder)
        manifest = folder / CHECKSUMS
        if not manifest.is_file():  # written before checkpoints had a manifest: valid if it reads back
            try:
                _read_checkpoint(folder, "cpu")
            except _Unreadable as err:
                return err.detail
            return None
        try:
            files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
            expected = {str(name): (int(f["size"]), str(f["sha256"])) for name, f in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return f"{CHECKSUMS} cannot be read ({type(err).__name__}: {err})"
        for name, (size, sha256) in expected.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {CHECKSUMS} records {size}"
            if _sha256(path) != sha256:
                return f"{name} does not match the sha256 {CHECKSUMS} records"
        return None

    def latest_valid(self) -> Path | None:
        """The newest checkpoint folder that passes `damage`, or None; warns naming each damaged newer one."""
        for folder in reversed(self.checkpoints()):
            found = self.damage(folder)
            if found is None:
                return folder
            warnings.warn(
                f"checkpoint {str(folder)!r} is damaged ({found}); resuming from the checkpoint before it instead "
                "(the damaged one is removed, and written again when the run gets there).",
                stacklevel=2,
            )
        return None

    def load_checkpoint(self, folder: Path | None = None, device: str | torch.device = "cpu") -> Checkpoint:
        """The checkpoint in `folder` (default: the newest valid one, `latest_valid`), tensors on `device`.

        Raises:
            FileNotFoundError: the run has no (valid) checkpoint.
            ValueError: a file of `folder` cannot be read (naming it).
        """
        folder = self.latest_valid() if folder is None else Path(folder)
        if folder is None:
            raise FileNotFoundError(f"no valid checkpoint under {self.checkpoint_root}; train the run first.")
        return _read_checkpoint(folder, device)

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

        The checkpoint returned is the newest valid one (`latest_valid`: damaged newer ones are named in a warning).

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
        checkpoint = self.latest_valid()
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
        new = _flatten(json.loads(json.dumps({k: record.get(k) for k in ("objective", "config", "run")})))  # as saved
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
        """Create the folder, remove leftovers of killed writers and checkpoints after `step` (damaged ones, which
        `check` skipped), write the record and drop the log lines of steps after `step` (the steps a resumed run
        takes again) and unreadable ones."""
        self.path.mkdir(parents=True, exist_ok=True)
        clean_temporary(self.path)
        if self.checkpoint_root.is_dir():
            clean_temporary(self.checkpoint_root)
        for folder in self.checkpoints():
            if _step_of(folder) > step:
                shutil.rmtree(folder)
        full = {"format": FORMAT, "version": VERSION, **record}
        write_atomic(self.record_path, json.dumps(full, indent=1))
        if self.log_path.is_file():
            self._trim_log(step)

    def _trim_log(self, step: int) -> None:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        kept, unreadable = [], 0
        for line in text.splitlines():
            try:
                entry = json.loads(line) if line.strip() else None
            except ValueError:
                unreadable += 1  # e.g. the last line of a killed run, cut off mid-write
                continue
            if isinstance(entry, dict) and entry.get("step", 0) <= step:
                kept.append(line)
        if unreadable:
            warnings.warn(
                f"{str(self.log_path)!r} had {unreadable} unreadable line(s) (cut off when a run was killed?); "
                "dropped them.",
                stacklevel=3,
            )
        new = "".join(line + "\n" for line in kept)
        if new != text:
            write_atomic(self.log_path, new)

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
            (folder / CHECKSUMS).write_text(json.dumps(_checksums(folder)), encoding="utf-8")  # last

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
