"""The rows `discadapt demo` adds to the base pipeline's, from whatever bundled models exist.

- Probing table (`probing.hard_negative_table`): image-text matching against hard negatives on rendered held-out
  scenes, for the world CLIP (bundle "clip"), the pipeline's own denoising error (DiffusionITM, 10 timesteps) and
  the probed discriminative adapter (bundle "adapter", when present).

Each row is measured the same way for every scorer (same examples, same negatives); a bundle that is missing is
skipped with a note, so the demo runs at every stage of the project.
"""

from __future__ import annotations

from .bundle import BundleError, load_clip
from .probing import clip_scorer, denoising_scorer, hard_negative_table

__all__ = ["PROBING_EXAMPLES", "probing_table"]

PROBING_EXAMPLES = {"full": 100, "quick": 10}  # examples per category and held-out split


def probing_table(quick: bool = False, root=None):
    """A function `pipe -> bench.Table` (for `run_demo(extra_tables=...)`) of hard-negative ITM accuracy."""

    def table(pipe):
        scorers = {}
        try:
            scorers["world CLIP"] = clip_scorer(load_clip(root=root))
        except BundleError:
            pass
        scorers["denoising error (10 t)"] = denoising_scorer(pipe)
        return hard_negative_table(scorers, n=PROBING_EXAMPLES["quick" if quick else "full"])

    return table
