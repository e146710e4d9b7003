"""Critics of the synthesis-understanding loop (ArtAug): scorers of generated images that can also suggest how to
regenerate them (a refined prompt, regions with local prompts).

One idea per file:

- `base.py`: the `Critic` protocol, `Suggestion`, `LayoutCritic` (score-only critics suggest the planned layout),
  `ScorerCritic` (any `scorers.Scorer`), `critic_from_name` (a plug-in's scorer, e.g. the shapes world's "world CLIP");
- `layout.py`: `plan_layout(prompt)`, prompt-to-layout planning from generic English relation words;
- `adapter.py`: `AdapterCritic`, the discriminative adapter's ITM score and REC-checked layouts;
- `denoising.py`: `DenoisingCritic`, the pipeline's own (relative) denoising error, and `LocatingCritic`, the
  denoising error of each phrase inside its planned box against outside it (a critic that sees relations);
- `clip.py`: `CLIPCritic` (transformers) and `OpenCLIPCritic` (open_clip, optional);
- `aesthetic.py`: `AestheticCritic`, a LAION-style aesthetic head on CLIP image embeddings;
- `vlm.py`: `VLMCritic`, a vision-language model's JSON rating and suggestions, parsed leniently (`parse_reply`);
- `ensemble.py`: `EnsembleCritic`, rank or z-score averages within prompt groups.

A critic whose weights are missing fails at construction with a `FileNotFoundError` naming the path and where such
weights come from. The evaluation's judge (a world's oracle) is never a critic of a gain row.

Example:
    >>> from discadapt.interaction.critics import AdapterCritic, EnsembleCritic, critic_from_name
    >>> critic = EnsembleCritic([critic_from_name("world CLIP"), AdapterCritic(pipe, adapter)], method="rank")
    >>> scores, suggestions = critic.score(images, prompts), critic.suggest(images, prompts)
"""

from .adapter import AdapterCritic
from .aesthetic import AestheticCritic, AestheticHead
from .base import Critic, LayoutCritic, ScorerCritic, Suggestion, check_pairs, critic_from_name, to_pil
from .clip import CLIPCritic, OpenCLIPCritic
from .denoising import DenoisingCritic, LocatingCritic
from .ensemble import EnsembleCritic, group_normalise
from .layout import Relation, parse_relation, plan_layout, relation_holds
from .vlm import Review, VLMCritic, parse_reply

__all__ = [
    "AdapterCritic",
    "AestheticCritic",
    "AestheticHead",
    "CLIPCritic",
    "Critic",
    "DenoisingCritic",
    "EnsembleCritic",
    "LayoutCritic",
    "LocatingCritic",
    "OpenCLIPCritic",
    "Relation",
    "Review",
    "ScorerCritic",
    "Suggestion",
    "VLMCritic",
    "check_pairs",
    "critic_from_name",
    "group_normalise",
    "parse_relation",
    "parse_reply",
    "plan_layout",
    "relation_holds",
    "to_pil",
]
