"""Tiny random evaluator models saved to folders, for tests and examples of `discadapt.evaluators` and `bench run`.

Each builder writes, offline and in about a second, a folder that the matching evaluator loads with
`from_pretrained` as it would the published weights:

- `tiny_clip_folder`: a CLIPModel and CLIPProcessor (the real CLIP vocabulary) for `CLIPScorer` (`--metric clip=`);
- `tiny_aesthetic_head_file`: an `AestheticHead` fitting that CLIP, for `AestheticScorer` (`--metric aesthetic=`);
- `tiny_blip_vqa_folder`: a BlipForQuestionAnswering over a 32-word vocabulary, for `BLIPVQAScorer`
  (`--metric blip-vqa=`);
- `tiny_owlv2_folder`, `tiny_owlvit_folder`: zero-shot detectors for `DetectionScorer` (`--metric detector=`).

The weights are random (seeded): the scores are those of the model, not of any judgement. transformers is imported
when a builder runs.

Example:
    >>> from discadapt.evaluators import CLIPScorer
    >>> from discadapt.testing import tiny_clip_folder
    >>> scorer = CLIPScorer.from_pretrained(tiny_clip_folder("/tmp/tiny-clip"), scale=100.0)  # doctest: +SKIP
    >>> scorer.score(images, prompts)  # (N,)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .tokenizer import clip_tokenizer

__all__ = [
    "BLIP_VQA_WORDS",
    "tiny_aesthetic_head_file",
    "tiny_blip_vqa_folder",
    "tiny_clip_folder",
    "tiny_owlv2_folder",
    "tiny_owlvit_folder",
]

# The tiny BLIP-VQA's vocabulary (BERT's special tokens, BLIP's decoder start [DEC], answers, a few prompt words);
# other words read as [UNK].
BLIP_VQA_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] [DEC] yes no ? , . a the green blue red yellow bench bowl book cup cat dog on "
    "left right of and with near photo".split()
)


def _save(model, processor, path: str | os.PathLike) -> Path:
    """`model` and `processor` saved to the folder `path` (created), as `from_pretrained` reads them."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_clip_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random CLIPModel saved with its processor to `path` (created).

    Text and vision width 32, 2 layers, 2 heads, projection width 16; 32 x 32 images in 8 x 8 patches (the processor
    resizes and crops to 32); the real CLIP vocabulary (`discadapt.clip_tokenizer`).

    Args:
        path (str | PathLike): the folder to write.
        seed (int): `torch.manual_seed` before the model is built. Default 0.

    Returns:
        Path: `path`.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(common, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
    vision = dict(common, image_size=32, patch_size=8)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=dict(text, pad_token_id=49407), vision_config=vision, projection_dim=16))
    crop = {"height": 32, "width": 32}
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop), clip_tokenizer())
    return _save(model, processor, path)


def tiny_aesthetic_head_file(path: str | os.PathLike, clip_folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random `evaluators.AestheticHead` on the embeddings of the CLIP in `clip_folder`, saved to the safetensors
    file `path` (its folder created).

    Args:
        path (str | PathLike): the file to write, e.g. `tmp / "head.safetensors"`.
        clip_folder (str | PathLike): a transformers CLIP folder (e.g. `tiny_clip_folder`); its `projection_dim`
            is the head's input width.
        seed (int): `torch.manual_seed` before the head is built. Default 0.

    Returns:
        Path: `path`.
    """
    from safetensors.torch import save_file
    from transformers import CLIPConfig

    from .evaluators import AestheticHead

    dim = CLIPConfig.from_pretrained(clip_folder).projection_dim
    torch.manual_seed(seed)
    head = AestheticHead(dim).eval()
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(head.state_dict(), file)
    return file


def tiny_blip_vqa_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random BlipForQuestionAnswering saved with its processor to `path` (created).

    Text and vision width 32, 2 layers, 4 heads; 32 x 32 images in 8 x 8 patches; a BERT tokenizer over
    `BLIP_VQA_WORDS` (its `vocab.txt` written to `path`). The default initialisation (vision std 1e-10) answers
    about 0.5 to everything, so every matrix is redrawn from N(0, 0.3^2) (a generator seeded with `seed`): the
    model then tells questions and images apart.

    Args:
        path (str | PathLike): the folder to write.
        seed (int): seeds the model's construction and the redrawn matrices. Default 0.

    Returns:
        Path: `path`.
    """
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    words = BLIP_VQA_WORDS
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    text = dict(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=words.index("[DEC]"),
        sep_token_id=words.index("[SEP]"),
        pad_token_id=words.index("[PAD]"),
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return _save(model, BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer), folder)


def _owl_configs() -> tuple[dict, dict]:
    """Text and vision configs shared by the tiny OWLv2 and OWL-ViT: width 32, 2 layers, 2 heads, 16 text positions,
    64 x 64 images in 16 x 16 patches."""
    text = dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
    )
    return text, vision


def tiny_owlv2_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random Owlv2ForObjectDetection saved with its processor to `path` (created).

    Width 32, 2 layers, projection width 32; images padded to a square and resized to 64 x 64 (16 x 16 patches);
    queries of at most 16 tokens over the real CLIP vocabulary.

    Args:
        path (str | PathLike): the folder to write.
        seed (int): `torch.manual_seed` before the model is built. Default 0.

    Returns:
        Path: `path`.
    """
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    text, vision = _owl_configs()
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    processor = Owlv2Processor(
        Owlv2ImageProcessorPil(size={"height": 64, "width": 64}), clip_tokenizer(model_max_length=16)
    )
    return _save(model, processor, path)


def tiny_owlvit_folder(path: str | os.PathLike, seed: int = 0) -> Path:
    """A random OwlViTForObjectDetection saved with its processor to `path` (created): as `tiny_owlv2_folder`, with
    images stretched to 64 x 64 instead of padded.

    Args:
        path (str | PathLike): the folder to write.
        seed (int): `torch.manual_seed` before the model is built. Default 0.

    Returns:
        Path: `path`.
    """
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTProcessor
    from transformers.models.owlvit.image_processing_pil_owlvit import OwlViTImageProcessorPil

    text, vision = _owl_configs()
    torch.manual_seed(seed)
    model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32))
    size = {"height": 64, "width": 64}
    processor = OwlViTProcessor(OwlViTImageProcessorPil(size=size, crop_size=size), clip_tokenizer(model_max_length=16))
    return _save(model, processor, path)
