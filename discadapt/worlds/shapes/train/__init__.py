"""Training the shapes world's own text-to-image pipeline from its seed, and judging it with the oracle.

One idea per file:

- `config.py`: `WorldTrainConfig` (what determines the trained weights), with the defaults of the bundled pipeline;
- `data.py`: the batches of each step, a pure function of (seed, phase, step);
- `state.py`: `WorldState`, a run's models (from `models.initial_models`), EMA and latent scale, and their checkpoint
  form;
- `objective.py`: the trainer, `train_world` (VAE phase, latent scale, UNet phase with EMA), an objective of
  `discadapt.train.engine`;
- `export.py`: a run as a pipeline folder: `load_run`, `save_pipeline`, `export_pipeline`;
- `evaluate.py`: `evaluate_world` (oracle accuracy of generated images), `reconstruction_accuracy` (of the VAE).

The models themselves and the assembly of the pipeline are in `..models`, which the bundle loader uses too.

Example:
    >>> from discadapt.worlds.shapes.models import ModelSizes
    >>> from discadapt.worlds.shapes.train import train_world
    >>> result = train_world("/tmp/w", vae_steps=2, unet_steps=2, batch_size=2, sizes=ModelSizes.tiny(),
    ...                      progress=False)  # doctest: +SKIP
"""

from .config import WorldTrainConfig
from .evaluate import evaluate_world, reconstruction_accuracy
from .export import export_pipeline, load_run, save_pipeline
from .objective import WorldPipelineObjective, train_world
from .state import WorldState

__all__ = [
    "WorldPipelineObjective",
    "WorldState",
    "WorldTrainConfig",
    "evaluate_world",
    "export_pipeline",
    "load_run",
    "reconstruction_accuracy",
    "save_pipeline",
    "train_world",
]
