"""The rows `discadapt demo` adds to the base pipeline's, from whatever bundled models exist.

- Methods (`run_demo(methods=...)`): self-correction with the stage-1 adapter (bundle "adapter"), plain and
  low-overhead ("reuse") modes; the stage-2 tuned pipeline (bundle "lora", fused), alone, with self-correction by
  its own adapter (bundle "tuned_adapter"), and with the layout term after it (`LAYOUT`); the interaction loop's
  enhanced pipeline (bundle "interaction", its rounds fused). Every row draws the same prompts with the same seeds
  as the base row.
- Tables (`run_demo(extra_tables=...)`): image-text matching against hard negatives on rendered held-out scenes
  (`probing.hard_negative_table`) for the world CLIP (bundle "clip"), the denoising error of the base and tuned
  pipelines (DiffusionITM, 10 timesteps) and the adapters; and the adapters' image-side ITM and REC accuracy on
  held-out items (`probing.adapter_table`).

A bundle that is missing is skipped, so the demo runs at every stage of the project. `demo_rows` assembles it all.
"""

from __future__ import annotations

from pathlib import Path

from ...bench import pipeline_method
from ...scorers import AdapterScorer, DenoisingScorer
from .bundle import WEIGHTS_DIR, BundleError, load_adapter, load_clip, load_interaction, load_lora, load_pipeline
from .demo import GUIDANCE
from .probing import adapter_table, clip_scorer, hard_negative_table

__all__ = [
    "ADAPTER_ITEMS",
    "ADAPTER_T",
    "CORRECTION",
    "LAYOUT",
    "TUNED_CORRECTION",
    "PROBING_EXAMPLES",
    "SCORE_BATCH",
    "bundled_adapter",
    "bundled_interaction",
    "bundled_tuned",
    "correction_methods",
    "demo_rows",
    "probing_table",
    "tuned_methods",
]

PROBING_EXAMPLES = {"full": 100, "quick": 10}  # examples per category and held-out split
ADAPTER_ITEMS = {"full": 250, "quick": 25}  # items per held-out split of the adapter table
ADAPTER_T = 250  # timestep at which the adapter scores rendered scenes (its evaluation timestep)
CORRECTION = {"scale": 0.5, "stop": 0.6, "normalize": "unit"}  # self-correction settings of the demo rows
# on the tuned model (chosen on train-split prompts, issue 12): every second step of the window, twice the step
TUNED_CORRECTION = {**CORRECTION, "scale": 1.0, "every": 2}
# the layout term (issue 12, hypothesis 3; chosen on train-split prompts): the phrases of a pairwise relation moved
# toward their planned halves at every step of the schedule's 20-60%, after the reuse correction
LAYOUT = {"scale": 1.0, "start": 0.2, "stop": 0.6, "normalize": "unit", "positions": False}
SCORE_BATCH = 256  # pairs per UNet call of the probing scorers


def bundled_adapter(root=None, name: str = "adapter"):
    """The bundled adapter `name` ("adapter": stage 1; "tuned_adapter": stage 2), or None when it is not bundled."""
    try:
        return load_adapter(root=root, name=name)
    except BundleError:
        return None


def bundled_tuned(device="cpu", root=None):
    """`(pipeline, adapter)`: the bundled world pipeline with the bundled stage-2 LoRA fused, and the adapter trained
    with it (None when not bundled); or None when no LoRA is bundled."""
    if not (Path(WEIGHTS_DIR if root is None else root) / "lora" / "manifest.json").exists():
        return None
    adapter = bundled_adapter(root, name="tuned_adapter")
    pipe = load_lora(load_pipeline(device=device, root=root), root=root)
    return pipe, None if adapter is None else adapter.to(device)


def bundled_interaction(device="cpu", root=None):
    """`(label, pipeline)`: the demo row's name (critic, rounds) and the bundled world pipeline with the bundled
    interaction rounds fused; or None when none is bundled."""
    if not (Path(WEIGHTS_DIR if root is None else root) / "interaction" / "manifest.json").exists():
        return None
    pipe, manifest = load_interaction(load_pipeline(device=device, root=root), root=root)
    rounds = len(manifest["rounds"])
    return f"interaction ({manifest['critic']}, {rounds} round{'s' if rounds > 1 else ''})", pipe


def probing_table(quick: bool = False, root=None, adapter=None, tuned=None):
    """A function `pipe -> bench.Table` (for `run_demo(extra_tables=...)`) of hard-negative ITM accuracy for the
    world CLIP (when bundled), the denoising score, `adapter` (when given) and the tuned `(pipeline, adapter)`."""

    def table(pipe):
        scorers = {}
        try:
            scorers["world CLIP"] = clip_scorer(load_clip(root=root))
        except BundleError:
            pass
        scorers["denoising error (10 t)"] = DenoisingScorer(pipe, num_timesteps=10, batch_size=SCORE_BATCH)
        if adapter is not None:
            scorers[f"adapter ITM (t={ADAPTER_T})"] = AdapterScorer(pipe, adapter, t=ADAPTER_T, batch_size=SCORE_BATCH)
        if tuned is not None:
            tuned_pipe, tuned_adapter = tuned
            scorers["tuned: denoising error (10 t)"] = DenoisingScorer(tuned_pipe, 10, batch_size=SCORE_BATCH)
            if tuned_adapter is not None:
                scorers[f"tuned: adapter ITM (t={ADAPTER_T})"] = AdapterScorer(
                    tuned_pipe, tuned_adapter, t=ADAPTER_T, batch_size=SCORE_BATCH
                )
        return hard_negative_table(scorers, n=PROBING_EXAMPLES["quick" if quick else "full"])

    return table


def correction_methods(pipe, adapter, steps: int, guidance: float = GUIDANCE, prefix: str = "", **correction) -> dict:
    """Demo rows `{prefix}self-correction (plain)` and `(reuse)`: `pipe` wrapped by `SelfCorrectingPipeline` with
    `adapter` and `CORRECTION` (overridden by `correction`)."""
    from ...sampling import SelfCorrectingPipeline

    settings = {**CORRECTION, **correction}
    return {
        f"{prefix}self-correction ({mode})": pipeline_method(
            SelfCorrectingPipeline.from_pipe(pipe, adapter=adapter, correction={**settings, "mode": mode}),
            steps,
            guidance,
        )
        for mode in ("plain", "reuse")
    }


def tuned_methods(tuned, adapter=None, steps: int = 25, guidance: float = GUIDANCE) -> dict:
    """Demo rows of the tuned pipeline `tuned` (LoRA fused): `tuned`, and with an adapter also
    `tuned + self-correction (plain)` and `(reuse)` (`TUNED_CORRECTION`), and `(reuse) + layout` (`LAYOUT`)."""
    from ...sampling import SelfCorrectingPipeline

    rows = {"tuned": pipeline_method(tuned, steps, guidance)}
    if adapter is not None:
        rows.update(correction_methods(tuned, adapter, steps, guidance, prefix="tuned + ", **TUNED_CORRECTION))
        correction = {**TUNED_CORRECTION, "mode": "reuse"}
        laid = SelfCorrectingPipeline.from_pipe(tuned, adapter=adapter, correction=correction, layout=LAYOUT)
        rows["tuned + self-correction (reuse) + layout"] = pipeline_method(laid, steps, guidance)
    return rows


def demo_rows(pipe, steps: int, guidance: float = GUIDANCE, quick: bool = False, correction: bool = True,
              probing: bool = True, device="cpu", root=None) -> tuple[dict, list]:  # fmt: skip
    """`(methods, extra_tables)` of `run_demo` for the bundled models on top of `pipe` (the bundled world
    pipeline): self-correction rows (`correction`), tuned rows, the interaction row, and the probing tables
    (`probing`)."""
    adapter = bundled_adapter(root)
    adapter = None if adapter is None else adapter.to(device)
    tuned = bundled_tuned(device, root)
    methods = {}
    if adapter is not None and correction:
        methods.update(correction_methods(pipe, adapter, steps, guidance))
    if tuned is not None:
        methods.update(tuned_methods(tuned[0], tuned[1] if correction else None, steps, guidance))
    interaction = bundled_interaction(device, root)
    if interaction is not None:
        methods[interaction[0]] = pipeline_method(interaction[1], steps, guidance)
    tables = []
    if probing:
        tables.append(probing_table(quick, root, adapter, tuned))
        adapters = {"stage 1, base model": (pipe, adapter)} if adapter is not None else {}
        if tuned is not None and tuned[1] is not None:
            adapters["tuned_adapter, tuned model"] = tuned
        if adapters:
            n = ADAPTER_ITEMS["quick" if quick else "full"]
            tables.append(lambda _: adapter_table(adapters, n=n, t=ADAPTER_T))
    return methods, tables
