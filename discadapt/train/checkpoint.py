"""Run folders of the training loops: the record of what a run is, and atomic checkpoints to resume it.

Layout of `out_dir`:

    train_config.json         {"format", "version", "stage", "config": TrainConfig.to_dict(), "run": run_identity()}
    checkpoints/step-NNNNNNNN/
        trainable.safetensors  every parameter that trains (adapter, LoRA), float32, by name
        optimizer.pt           the optimizer's state_dict (read back with weights_only=True)
        state.json             {"step": N}
    log.jsonl                  one line per `log_every` steps: step, losses, lr, seconds, samples per second
    adapter/                   the trained adapter (`save_pretrained`), at the end
    lora/                      stage 2: the LoRA in diffusers' format (`load_lora_weights`), at the end
    eval.json                  evaluation results, when evaluation data were given

A checkpoint is written under a temporary name and renamed (`os.replace`), so `checkpoints/` only ever holds
complete ones. A folder is resumed only with the same stage, configuration (but the fields of
`RESUMABLE_FIELDS`), pipeline weights, data and number of processes; anything else raises a ValueError naming the
differences before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import RESUMABLE_FIELDS

__all__ = [
    "FORMAT",
    "check_run_dir",
    "latest_checkpoint",
    "load_checkpoint",
    "module_fingerprint",
    "save_checkpoint",
    "write_atomic",
]

FORMAT = "discadapt.train"
RECORD = "train_config.json"


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


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and `os.replace`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of `out_dir`, or None."""
    found = _checkpoints(Path(out_dir))
    return found[-1] if found else None


def _flatten(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        flat = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def check_run_dir(out_dir: Path, record: dict, resume: bool) -> Path | None:
    """Check that `out_dir` may receive the run `record`; return the checkpoint to resume from, or None.

    Raises:
        ValueError: `out_dir` holds a run and `resume` is False; or it holds another run (naming the fields that
            differ); or its newest checkpoint is past `record["config"]["steps"]`.
    """
    path = out_dir / RECORD
    checkpoint = latest_checkpoint(out_dir)
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if saved is None and checkpoint is None:
        return None
    if not resume:
        at = f" at step {_step(checkpoint)}" if checkpoint else ""
        raise ValueError(
            f"`out_dir` {str(out_dir)!r} already holds a training run{at}; pass resume=True (--resume) to continue "
            "it, or a new `out_dir`."
        )
    if saved is not None:
        if saved.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is not a discadapt training record; pass another `out_dir`.")
        old, new = _flatten({k: saved.get(k) for k in ("stage", "config", "run")}), _flatten(record)
        free = {f"config.{name}" for name in RESUMABLE_FIELDS}
        if saved["config"].get("lr_schedule") != "constant":
            free.discard("config.steps")
        differing = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
        if differing:
            detail = "; ".join(f"{k}: saved {old.get(k)!r}, now {new.get(k)!r}" for k in differing[:8])
            more = f" (and {len(differing) - 8} more)" if len(differing) > 8 else ""
            raise ValueError(
                f"`out_dir` {str(out_dir)!r} holds a run with another configuration ({detail}{more}); pass the same "
                "settings, pipeline and data to resume it, or a new `out_dir`. Nothing was written."
            )
    if checkpoint is not None and _step(checkpoint) > record["config"]["steps"]:
        raise ValueError(
            f"`steps` is {record['config']['steps']}, but {str(out_dir)!r} already holds {_step(checkpoint)} steps; "
            "pass at least that many, or a new `out_dir`."
        )
    return checkpoint


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def save_checkpoint(
    out_dir: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict, keep: int
) -> Path:
    """Write checkpoint `step` atomically and keep the `keep` newest ones."""
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in trainable.items()}
    save_file(tensors, tmp / "trainable.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}), encoding="utf-8")
    if final.exists():  # the same step written by an earlier, interrupted attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(checkpoint: Path, device) -> tuple[int, dict[str, torch.Tensor], dict]:
    """`(step, trainable tensors, optimizer state)` of a checkpoint folder."""
    step = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))["step"]
    trainable = load_file(checkpoint / "trainable.safetensors", device=str(device))
    optimizer = torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True)
    return step, trainable, optimizer


def clean_temporary(out_dir: Path) -> None:
    """Remove temporary checkpoint folders left by killed runs."""
    root = out_dir / "checkpoints"
    if root.is_dir():
        for tmp in root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
