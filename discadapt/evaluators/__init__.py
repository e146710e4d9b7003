"""Evaluators: understanding models loaded from local paths that score (image, prompt) pairs, each a
`scorers.Scorer` (`name`, `score(images, prompts) -> (N,)`, higher is better) that says which model it is
(`model`, a string for reports).

The metrics of `discadapt bench` (`metrics`) and the critics of the interaction loop (`interaction.critics`) are
built on them; nothing here generates images. Model libraries (transformers, safetensors, open_clip) are imported
when a model is loaded, not when this package is.

- `inputs.py`: what they share: (image, prompt) pair checks, images as PIL, local model folders, embeddings.
- `clip.py`: `CLIPScorer` (transformers) and `OpenCLIPScorer` (open_clip, optional), scaled as the model's logits
  (`scale="logit"`) or as the CLIP score `w * max(cos, 0)` (`scale=100.0`, torchmetrics' `CLIPScore`).
- `aesthetic.py`: `AestheticScorer`, a LAION-style `AestheticHead` on CLIP image embeddings.
- `vqa.py`: `BLIPVQAScorer`, T2I-CompBench's BLIP-VQA through transformers BLIP: the prompt's noun phrases
  (`noun_phrases`) each asked as a yes/no question, P(yes) multiplied.
- `detection_spec.py`, `detector.py`, `detection.py`: GenEval-style object checks (presence, count, colour, relative
  position) through a transformers detector (OWLv2, OWL-ViT, Grounding DINO, DETR), no mmdet: `object_spec(prompt)`,
  `TransformersDetector`, `DetectionScorer` (a scorer of 1 / 0 and a judge with reasons).

Example:
    >>> from discadapt.evaluators import CLIPScorer
    >>> scorer = CLIPScorer.from_pretrained("/models/clip-vit-large-patch14", scale=100.0, name="CLIP score")
    >>> scorer.score(images, prompts), scorer.model  # (N,), 'CLIPModel at /models/clip-vit-large-patch14'
"""

from .aesthetic import AestheticHead, AestheticScorer
from .clip import CLIPScorer, OpenCLIPScorer, scale_cosine
from .detection import DetectionScorer
from .detection_spec import ObjectSpec, PromptSpec, object_spec
from .detector import Detection, TransformersDetector
from .inputs import check_pairs, features, require_folder, to_pil
from .vqa import BLIPVQAScorer, noun_phrases

__all__ = [
    "AestheticHead",
    "AestheticScorer",
    "BLIPVQAScorer",
    "CLIPScorer",
    "Detection",
    "DetectionScorer",
    "ObjectSpec",
    "OpenCLIPScorer",
    "PromptSpec",
    "TransformersDetector",
    "check_pairs",
    "features",
    "noun_phrases",
    "object_spec",
    "require_folder",
    "scale_cosine",
    "to_pil",
]
