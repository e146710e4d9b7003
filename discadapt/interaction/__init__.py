"""The synthesis-understanding interaction (ArtAug): critics of generated images (`critics`), and the loop that
regenerates from their suggestions, keeps the images they prefer and fuses what was learnt into the model.

- `critics/`: scorers that can also suggest a regeneration (a refined prompt, regions);
- `dataset.py`: what a round keeps on disk (`RoundData`), `select` (the kept images), `rejected_for` (DPO pairs);
- `enhance.py`: the enhancement LoRA (denoising or Diffusion-DPO objective), `fuse_enhancements`, `merge_loras`,
  `lora_update` (a LoRA's weight update per module);
- `loop.py`: `augment`, the resumable rounds with their stop test;
- `distil.py`: a sampling-time correction (e.g. self-correction) recorded step by step (`record_trajectories`) and
  learnt by an enhancement LoRA (`distil_correction`), so that the fused model takes the corrected steps itself;
- `reward.py`: an enhancement LoRA trained by a critic's differentiable score of the pipeline's own samples,
  backpropagated through the sampler (`train_reward`, DRaFT-K).

Example:
    >>> from discadapt.interaction import AugmentConfig, augment, critic_from_name, fuse_enhancements
    >>> result = augment(pipe, critic_from_name("world CLIP"), prompts, "runs/augment", AugmentConfig(rounds=3))
    >>> fuse_enhancements(fresh_pipe, result["loras"])  # the accepted rounds, merged: no cost at inference
"""

from .critics import (
    AdapterCritic,
    AestheticCritic,
    CLIPCritic,
    Critic,
    DenoisingCritic,
    EnsembleCritic,
    OpenCLIPCritic,
    ScorerCritic,
    Suggestion,
    VLMCritic,
    critic_from_name,
    parse_reply,
    plan_layout,
)
from .dataset import Candidate, RoundData, rejected_for, select
from .distil import Trajectories, distil_correction, record_trajectories
from .enhance import (
    EnhanceConfig,
    fuse_enhancements,
    load_enhancement,
    lora_update,
    merge_loras,
    train_enhancement,
)
from .loop import AugmentConfig, augment
from .reward import RewardObjective, train_reward

__all__ = [
    "AugmentConfig",
    "Candidate",
    "EnhanceConfig",
    "RoundData",
    "Trajectories",
    "augment",
    "distil_correction",
    "fuse_enhancements",
    "lora_update",
    "merge_loras",
    "load_enhancement",
    "record_trajectories",
    "rejected_for",
    "RewardObjective",
    "select",
    "train_enhancement",
    "train_reward",
    "AdapterCritic",
    "AestheticCritic",
    "CLIPCritic",
    "Critic",
    "DenoisingCritic",
    "EnsembleCritic",
    "OpenCLIPCritic",
    "ScorerCritic",
    "Suggestion",
    "VLMCritic",
    "critic_from_name",
    "parse_reply",
    "plan_layout",
]
