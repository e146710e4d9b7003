"""The rows `discadapt demo` adds to the base pipeline's, from whatever bundled models exist.

- Probing table (`probing.hard_negative_table`): image-text matching against hard negatives on rendered held-out
  scenes, for the world CLIP (bundle "clip"), the pipeline's own denoising error (DiffusionITM, 10 timesteps) and
  the probed discriminative adapter (bundle "adapter").
- Methods (`run_demo(methods=...)`): self-correction with the adapter, plain and low-overhead ("reuse") modes,
  and the stage-2 tuned pipeline (bundle "lora", fused), alone and with self-correction; every row draws the same
  prompts with the same seeds as the base row.

A bundle that is missing is skipped, so the demo runs at every stage of the project.
"""

from __future__ import annotations

from pathlib import Path

from .bundle import WEIGHTS_DIR, BundleError, load_adapter, load_clip, load_lora, load_pipeline
from .demo import GUIDANCE, pipeline_method
from .probing import adapter_scorer, clip_scorer, denoising_scorer, hard_negative_table

__all__ = [
    "ADAPTER_T",
    "CORRECTION",
    "PROBING_EXAMPLES",
    "bundled_adapter",
    "bundled_tuned_pipeline",
    "correction_methods",
    "probing_table",
    "tuned_methods",
]

PROBING_EXAMPLES = {"full": 100, "quick": 10}  # examples per category and held-out split
ADAPTER_T = 250  # timestep at which the adapter scores rendered scenes (its evaluation timestep)
CORRECTION = {"scale": 0.5, "stop": 0.6, "normalize": "unit"}  # self-correction settings of the demo rows


def bundled_adapter(root=None):
    """The bundled adapter, or None when none is bundled."""
    try:
        return load_adapter(root=root)
    except BundleError:
        return None


def bundled_tuned_pipeline(device="cpu", root=None):
    """The bundled world pipeline with the bundled stage-2 LoRA fused, or None when no LoRA is bundled."""
    if not (Path(WEIGHTS_DIR if root is None else root) / "lora" / "manifest.json").exists():
        return None
    return load_lora(load_pipeline(device=device, root=root), root=root)


def probing_table(quick: bool = False, root=None, adapter=None):
    """A function `pipe -> bench.Table` (for `run_demo(extra_tables=...)`) of hard-negative ITM accuracy for the
    world CLIP (when bundled), the denoising score and `adapter` (when given)."""

    def table(pipe):
        scorers = {}
        try:
            scorers["world CLIP"] = clip_scorer(load_clip(root=root))
        except BundleError:
            pass
        scorers["denoising error (10 t)"] = denoising_scorer(pipe)
        if adapter is not None:
            scorers[f"adapter ITM (t={ADAPTER_T})"] = adapter_scorer(pipe, adapter, t=ADAPTER_T)
        return hard_negative_table(scorers, n=PROBING_EXAMPLES["quick" if quick else "full"])

    return table


def correction_methods(pipe, adapter, steps: int, guidance: float = GUIDANCE, **correction) -> dict:
    """Demo rows `self-correction (plain)` and `self-correction (reuse)`: `pipe` wrapped by
    `SelfCorrectingPipeline` with `adapter` and `CORRECTION` (overridden by `correction`)."""
    from ...sampling import SelfCorrectingPipeline

    settings = {**CORRECTION, **correction}
    return {
        f"self-correction ({mode})": pipeline_method(
            SelfCorrectingPipeline.from_pipe(pipe, adapter, mode=mode, **settings), steps, guidance
        )
        for mode in ("plain", "reuse")
    }


def tuned_methods(tuned, adapter=None, steps: int = 25, guidance: float = GUIDANCE) -> dict:
    """Demo rows of the tuned pipeline `tuned` (LoRA fused): `tuned`, and with an adapter also
    `tuned + self-correction (reuse)`."""
    rows = {"tuned": pipeline_method(tuned, steps, guidance)}
    if adapter is not None:
        rows["tuned + self-correction (reuse)"] = correction_methods(tuned, adapter, steps, guidance)[
            "self-correction (reuse)"
        ]
    return rows
