"""A world pipeline run's models as a `StableDiffusionPipeline` folder: the run's newest checkpoint (`load_run`),
written atomically with a `train_step.json` marker (`save_pipeline`, `export_pipeline`).

Example:
    >>> export_pipeline("runs/world", "exported/")  # doctest: +SKIP
    >>> StableDiffusionPipeline.from_pretrained("exported/", local_files_only=True)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from ....train.runs import RunDir, write_output
from .config import WorldTrainConfig
from .state import WorldState

__all__ = ["export_pipeline", "load_run", "save_pipeline"]


def load_run(out_dir: str | os.PathLike, device: str = "cpu") -> WorldState:
    """The state (config, models, EMA, step, scale) of the newest checkpoint of the run in `out_dir`.

    Raises:
        FileNotFoundError: `out_dir` has no checkpoint.
        ValueError: the newest checkpoint is still in the VAE phase (no latent scale, no UNet yet).
    """
    run = RunDir(out_dir)
    checkpoint = run.load_checkpoint(device=device)  # FileNotFoundError when there is none
    state = WorldState(WorldTrainConfig.from_dict(run.record()["config"]), device).load(checkpoint)
    if state.scaling_factor is None:
        raise ValueError(f"the newest checkpoint of {out_dir} (step {state.step}) is still in the VAE phase.")
    return state


def save_pipeline(state: WorldState, path: str | os.PathLike) -> Path:
    """Write the pipeline of `state` (`WorldState.pipeline`) to `path` atomically, with the marker
    `{"step", "unet_steps"}`."""
    return write_output(
        path,
        lambda folder: state.pipeline().save_pretrained(folder, safe_serialization=True),
        {"step": state.step, "unet_steps": state.step - state.config.vae_steps},
    )


def export_pipeline(out_dir: str | os.PathLike, dest: str | os.PathLike, device: str = "cpu") -> Path:
    """Save the pipeline of the newest checkpoint of a (possibly unfinished) run in `out_dir` to `dest` (raises as
    `load_run`)."""
    return save_pipeline(load_run(out_dir, device), dest)
