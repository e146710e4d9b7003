"""Evaluators: understanding models loaded from local paths that score (image, prompt) pairs, each a
`scorers.Scorer` (`name`, `score(images, prompts) -> (N,)`, higher is better) that says which model it is.

The metrics of `discadapt bench` (`metrics`) and the critics of the interaction loop (`interaction.critics`) are
built on them; nothing here generates images.

- `inputs.py`: what they share: (image, prompt) pair checks, images as PIL, local model folders, embeddings.
"""

from .inputs import check_pairs, features, require_folder, to_pil

__all__ = ["check_pairs", "features", "require_folder", "to_pil"]
