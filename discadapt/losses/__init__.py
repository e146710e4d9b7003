"""Training losses of DPT's discriminative adapter, one per file.

- `itm.py`: image-text matching contrastive losses (hard-negative captions, hard-negative images, in-batch) and
  the matching accuracies used to evaluate them.
- `rec.py`: the REC set loss (class, L1, GIoU, token alignment), with its Hungarian matcher (`matcher.py`) and
  box utilities (`box_ops.py`).
- `denoise.py`: the diffusion model's denoising loss for its prediction type, optionally min-SNR weighted, and the
  denoising-contrast loss (the caption must explain the noise better than its hard negatives).
- `grounding.py`: the grounding loss of the UNet's cross-attention (each phrase attends inside its boxes).

All of them compute in float32 (float64 for float64 inputs) with autocast disabled.
"""

from .box_ops import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from .denoise import (
    PREDICTION_TYPES,
    denoising_contrast_loss,
    denoising_errors,
    denoising_loss,
    denoising_target,
    min_snr_weights,
    snr,
)
from .grounding import attention_grounding_loss, attention_shares
from .itm import in_batch_accuracy, in_batch_loss, itm_loss, multiple_choice_accuracy, multiple_choice_loss
from .matcher import HungarianMatcher
from .rec import RECLoss, RECLossConfig, rec_loss

__all__ = [
    "HungarianMatcher",
    "PREDICTION_TYPES",
    "RECLoss",
    "RECLossConfig",
    "attention_grounding_loss",
    "attention_shares",
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "denoising_contrast_loss",
    "denoising_errors",
    "denoising_loss",
    "denoising_target",
    "generalized_box_iou",
    "in_batch_accuracy",
    "in_batch_loss",
    "itm_loss",
    "min_snr_weights",
    "multiple_choice_accuracy",
    "multiple_choice_loss",
    "rec_loss",
    "snr",
]
