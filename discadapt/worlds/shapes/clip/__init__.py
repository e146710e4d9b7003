"""The shapes world's own CLIP: a small `transformers.CLIPModel` (text and image towers) trained contrastively on
the world's scenes with its hard negatives, a referee of color, shape, binding, count and spatial relations.

One idea per file:

- `config.py`: `WorldClipSizes` (widths and depths) and `WorldClipConfig` (what determines the trained weights),
  with the defaults of the bundled model;
- `model.py`: `make_world_clip` (seeded construction), `world_clip_config`, `logit_scale`;
- `inputs.py`: `preprocess` (uint8 images to [-1, 1]), `tokenize`, `encode_images`, `encode_texts`;
- `scores.py`: `clip_scores` (pairwise) and `clip_logits` (multiple choice);
- `loss.py`: `world_clip_loss` (in-batch InfoNCE plus hard negatives), `valid_pairs`;
- `evaluate.py`: `evaluate_world_clip` (accuracy per category, against hard negatives and other images);
- `reward.py`: `HardNegativeReward`, the model's preference of a prompt over its negatives as a differentiable reward
  of generated images (`interaction.train_reward`);
- `train.py`: the trainer, `train_world_clip` and `load_world_clip` (a run's model), an objective of
  `discadapt.train.engine`. It is not imported here, so that loading and scoring a bundled model
  (`bundle.load_clip`) does not load the training engine.

Model (`WorldClipSizes()`, the defaults): text transformer over the real 49,408-token CLIP vocabulary (bos 49406,
eos = pad 49407, 77 positions, `discadapt.clip_tokenizer`), hidden 64, 2 layers, 4 heads; vision transformer on
32 x 32 images, 4 x 4 patches (64 patches + CLS), hidden 96, 3 layers, 4 heads; both projected to 64 dimensions.
Parameter counts are in `WorldClipSizes`' docstring; most of the text tower is its token embedding (a lookup).

Example:
    >>> from discadapt.worlds.shapes import make_dataset, render
    >>> from discadapt.worlds.shapes.clip import WorldClipSizes, clip_logits, make_world_clip
    >>> model = make_world_clip(WorldClipSizes.tiny(), seed=0)
    >>> example = make_dataset(1, split="test_id", image_size=32)[0]
    >>> choices = [example.caption.text] + [n.caption.text for n in example.negatives]
    >>> clip_logits(model, render(example.scene)[None], [choices]).shape
    torch.Size([1, 2])
"""

from .config import WorldClipConfig, WorldClipSizes
from .evaluate import evaluate_world_clip
from .inputs import encode_images, encode_texts, preprocess, tokenize
from .loss import valid_pairs, world_clip_loss
from .model import logit_scale, make_world_clip, world_clip_config
from .reward import HardNegativeReward
from .scores import clip_logits, clip_scores

__all__ = [
    "HardNegativeReward",
    "WorldClipConfig",
    "WorldClipSizes",
    "clip_logits",
    "clip_scores",
    "encode_images",
    "encode_texts",
    "evaluate_world_clip",
    "logit_scale",
    "make_world_clip",
    "preprocess",
    "tokenize",
    "valid_pairs",
    "world_clip_config",
    "world_clip_loss",
]
