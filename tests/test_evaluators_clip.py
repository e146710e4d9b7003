"""CLIP evaluators: `CLIPScorer` on a tiny random CLIPModel against the model's own logits and against torchmetrics'
CLIP-score computation, `OpenCLIPScorer` through a stand-in open_clip module (and a real tiny open_clip where it
imports), `AestheticScorer` against the head on normalised embeddings, and weights checked before anything loads."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from discadapt.evaluators import (
    AestheticHead,
    AestheticScorer,
    CLIPScorer,
    OpenCLIPScorer,
    features,
    scale_cosine,
)
from discadapt.scorers import Scorer
from discadapt.testing import tiny_aesthetic_head_file, tiny_clip_folder

PROMPTS = ["a red circle", "a green triangle left of a square", "a cat above a dog", "two blue cubes"]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in PROMPTS]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """`tiny_clip_folder`: a random CLIPModel (width 32, 2 layers, 32 x 32 images), seed 5 for cosines of both signs
    on `images`, so the CLIP score's clamp is seen."""
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"), seed=5)


def _logits(folder, images, prompts):
    """The diagonal of `CLIPModel(...).logits_per_image` and the cosines behind it, computed directly."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values)
    logits = out.logits_per_image.diagonal()
    return model, processor, logits, logits / model.logit_scale.exp()


# ---- CLIPScorer ------------------------------------------------------------------------------------------------------
def test_clip_scorer_is_the_models_logits_by_default(clip_dir, images):
    scorer = CLIPScorer.from_pretrained(clip_dir)
    assert isinstance(scorer, Scorer) and scorer.name == "CLIP" and scorer.scale == "logit"
    assert scorer.model == f"CLIPModel at {clip_dir}"
    _, _, logits, _ = _logits(clip_dir, images, PROMPTS)
    torch.testing.assert_close(scorer.score(images, PROMPTS), logits, rtol=1e-5, atol=1e-5)
    pixels = np.stack([np.asarray(i) for i in images])  # (4, 32, 32, 3) uint8
    as_float = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255  # (4, 3, 32, 32) in [0, 1]
    small_batches = CLIPScorer.from_pretrained(clip_dir, batch_size=3)
    for scores in (
        scorer.score(pixels, PROMPTS),
        scorer.score(as_float, PROMPTS),
        small_batches.score(images, PROMPTS),
    ):
        assert scores.dtype == torch.float32 and scores.shape == (4,)
        torch.testing.assert_close(scores, logits, rtol=1e-5, atol=1e-5)


def test_clip_score_convention_is_100_max_cos_0(clip_dir, images):
    scorer = CLIPScorer.from_pretrained(clip_dir, scale=100.0, name="CLIP score")
    assert scorer.name == "CLIP score" and scorer.scale == 100.0
    _, _, _, cos = _logits(clip_dir, images, PROMPTS)
    assert (cos > 0.03).any() and (cos < -0.03).any()  # both sides of the clamp
    scores = scorer.score(images, PROMPTS)
    torch.testing.assert_close(scores, 100 * cos.clamp(min=0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(CLIPScorer.from_pretrained(clip_dir, scale=2.5).score(images, PROMPTS), scores / 40)


def test_clip_score_is_torchmetrics_100_cos_clamped_per_pair(clip_dir, images):
    """torchmetrics' own `100 * cos` per pair (the features read through `features()`, as its CLIPScore fails on the
    output objects of transformers 5); torchmetrics clamps the mean at 0, we clamp each pair."""
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    model, processor, _, _ = _logits(clip_dir, images, PROMPTS)

    class Features(nn.Module):  # get_*_features returning tensors, as in transformers 4
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config

        def get_image_features(self, *args, **kwargs):
            return features(model.get_image_features(*args, **kwargs))

        def get_text_features(self, *args, **kwargs):
            return features(model.get_text_features(*args, **kwargs))

    pixels = [torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in images]  # (3, 32, 32) uint8 each
    with torch.no_grad():
        expected, _ = _clip_score_update(pixels, PROMPTS, Features(), processor)
    scores = CLIPScorer.from_pretrained(clip_dir, scale=100.0).score(images, PROMPTS)
    torch.testing.assert_close(scores, expected.clamp(min=0), rtol=1e-5, atol=1e-4)


def test_scale_cosine_by_hand():
    cos, logit_scale = torch.tensor([0.3, -0.1, 0.0]), torch.tensor(math.log(50.0))
    torch.testing.assert_close(scale_cosine(cos, 100.0, logit_scale), torch.tensor([30.0, 0.0, 0.0]))
    torch.testing.assert_close(scale_cosine(cos, 2.5, logit_scale), torch.tensor([0.75, 0.0, 0.0]))
    torch.testing.assert_close(scale_cosine(cos, "logit", logit_scale), torch.tensor([15.0, -5.0, 0.0]))


def test_clip_scorer_errors_name_the_argument_and_the_fix(clip_dir, tmp_path, images):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"No model at .*nowhere.*huggingface-cli download openai/clip-vit"):
        CLIPScorer.from_pretrained(missing)
    scorer = CLIPScorer.from_pretrained(clip_dir)
    for scale in ("cosine", 0, -1.0, True, float("inf")):
        with pytest.raises(ValueError, match=r"`scale` is .*; pass 'logit' .* or a positive number w"):
            CLIPScorer(scorer.clip_model, scorer.processor, scale=scale)
    with pytest.raises(ValueError, match="`batch_size` is 0; pass an int >= 1"):
        CLIPScorer(scorer.clip_model, scorer.processor, batch_size=0)
    with pytest.raises(ValueError, match="`model` is a str; pass a transformers CLIPModel"):
        CLIPScorer("clip", scorer.processor)
    with pytest.raises(ValueError, match="`processor` is a NoneType; pass the model's CLIPProcessor"):
        CLIPScorer(scorer.clip_model, None)
    with pytest.raises(ValueError, match="Got 4 images but 1 prompts"):
        scorer.score(images, PROMPTS[:1])


# ---- AestheticScorer -------------------------------------------------------------------------------------------------
def test_aesthetic_scorer_is_the_head_on_normalised_clip_embeddings(clip_dir, images, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_aesthetic_head_file(tmp_path / "head.safetensors", clip_dir, seed=1)
    head = AestheticHead(16).eval()
    head.load_state_dict(load_file(tmp_path / "head.safetensors"))
    scorer = AestheticScorer.from_pretrained(clip_dir, head_path=tmp_path / "head.safetensors", batch_size=3)
    assert isinstance(scorer, Scorer) and scorer.name == "aesthetic"
    assert scorer.model == f"AestheticHead {tmp_path / 'head.safetensors'} on CLIPModel at {clip_dir}"
    model, processor, _, _ = _logits(clip_dir, images, PROMPTS)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected = head.layers(F.normalize(features(model.get_image_features(pixel_values=pixels)), dim=-1))[:, 0]
    torch.testing.assert_close(scorer.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(scorer.score(images, ["w", "x", "y", "z"]), scorer.score(images, PROMPTS))  # prompts ignored
    with pytest.raises(FileNotFoundError, match=r"No aesthetic head at .*nohead.safetensors.*improved-aesthetic"):
        AestheticScorer(clip_dir, tmp_path / "nohead.safetensors")
    with pytest.raises(FileNotFoundError, match=r"No model at .*nowhere.*openai/clip-vit-large-patch14"):
        AestheticScorer(tmp_path / "nowhere", tmp_path / "head.safetensors")
    save_file(AestheticHead(768).state_dict(), tmp_path / "l14.safetensors")
    with pytest.raises(ValueError, match=r"does not fit an aesthetic head on this CLIP \(projection width 16\)"):
        AestheticScorer(clip_dir, tmp_path / "l14.safetensors")


# ---- OpenCLIPScorer --------------------------------------------------------------------------------------------------
class _StandInCLIP(nn.Module):
    """What OpenCLIPScorer uses of an open_clip model: encode_image, encode_text, logit_scale."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual, self.token = nn.Linear(3 * 4 * 4, 6), nn.Embedding(64, 6)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels):  # (n, 3, 4, 4) -> (n, 6)
        return self.visual(pixels.flatten(1))

    def encode_text(self, tokens):  # (n, 2) -> (n, 6)
        return self.token(tokens).mean(1)


def _preprocess(image):  # PIL -> (3, 4, 4) float
    return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1) / 255


def _tokenize(texts):  # n strings -> (n, 2) ids
    return torch.tensor([[len(t) % 64, ord(t[-1]) % 64] for t in texts])


@pytest.fixture
def stand_in(monkeypatch):
    """A stand-in `open_clip` module in sys.modules (the real one imports torchvision, absent here)."""
    model, calls = _StandInCLIP(), []

    def create_model_and_transforms(model_name, pretrained=None, device=None):
        calls.append((model_name, pretrained, device))
        return model, None, _preprocess

    module = types.ModuleType("open_clip")
    module.list_models = lambda: ["Tiny-stand-in"]
    module.create_model_and_transforms = create_model_and_transforms
    module.get_tokenizer = lambda model_name: _tokenize
    monkeypatch.setitem(sys.modules, "open_clip", module)
    return model, calls


def test_open_clip_scorer_through_a_stand_in_module(stand_in, images, tmp_path):
    from discadapt.interaction.critics import OpenCLIPCritic, plan_layout

    model, calls = stand_in
    (tmp_path / "w.bin").write_bytes(b"")
    scorer = OpenCLIPScorer("Tiny-stand-in", tmp_path / "w.bin", batch_size=3)
    assert calls == [("Tiny-stand-in", str(tmp_path / "w.bin"), "cpu")] and not model.training
    assert (
        scorer.name == "open_clip Tiny-stand-in" and scorer.model == f"open_clip Tiny-stand-in at {tmp_path / 'w.bin'}"
    )
    with torch.no_grad():
        image = F.normalize(model.encode_image(torch.stack([_preprocess(i) for i in images])), dim=-1)
        cos = (image * F.normalize(model.encode_text(_tokenize(PROMPTS)), dim=-1)).sum(-1)
    assert (cos > 0.03).any() and (cos < -0.03).any()  # both sides of the clamp
    torch.testing.assert_close(scorer.score(images, PROMPTS), model.logit_scale.exp().detach() * cos)
    clip_score = OpenCLIPScorer.from_pretrained(tmp_path / "w.bin", model_name="Tiny-stand-in", scale=100.0)
    torch.testing.assert_close(clip_score.score(images, PROMPTS), 100 * cos.clamp(min=0))
    critic = OpenCLIPCritic("Tiny-stand-in", tmp_path / "w.bin")
    torch.testing.assert_close(critic.score(images, PROMPTS), scorer.score(images, PROMPTS))
    assert critic.suggest(images, PROMPTS)[2].regions == tuple(plan_layout(PROMPTS[2]))
    with pytest.raises(ValueError, match="`model_name` is 'ViT-Nope'; pick one of open_clip.list_models"):
        OpenCLIPScorer("ViT-Nope", tmp_path / "w.bin")
    with pytest.raises(ValueError, match="`scale` is 'cos'"):
        OpenCLIPScorer("Tiny-stand-in", tmp_path / "w.bin", scale="cos")


def test_open_clip_scorer_checks_the_file_before_importing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as where torchvision is missing
    with pytest.raises(FileNotFoundError, match=r"No open_clip weights at .*model.bin.*laion/CLIP-ViT-H-14"):
        OpenCLIPScorer("ViT-B-32", tmp_path / "model.bin")
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ImportError, match="OpenCLIPScorer needs open_clip.*pip install open_clip_torch"):
        OpenCLIPScorer("ViT-B-32", tmp_path / "model.bin")


def test_open_clip_scorer_on_a_real_tiny_open_clip(tmp_path, images):
    open_clip = pytest.importorskip("open_clip")  # imports torchvision, absent on the project's CPU machines
    vision = {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    config = tmp_path / "TinyCLIP-evaluator-test.json"
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("TinyCLIP-evaluator-test", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.bin")
    scorer = OpenCLIPScorer("TinyCLIP-evaluator-test", tmp_path / "tiny.bin", scale=100.0)
    with torch.no_grad():
        image = F.normalize(model.eval().encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        tokens = open_clip.get_tokenizer("TinyCLIP-evaluator-test")(PROMPTS)
        cos = (image * F.normalize(model.encode_text(tokens), dim=-1)).sum(-1)
    torch.testing.assert_close(scorer.score(images, PROMPTS), 100 * cos.clamp(min=0), rtol=1e-5, atol=1e-4)
    logit = OpenCLIPScorer("TinyCLIP-evaluator-test", tmp_path / "tiny.bin")
    torch.testing.assert_close(logit.score(images, PROMPTS), model.logit_scale.exp() * cos, rtol=1e-5, atol=1e-5)
