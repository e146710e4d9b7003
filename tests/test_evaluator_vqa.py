"""BLIP-VQA evaluator: the noun-phrase splitter, P(yes) against the model's own loss, the product rule, batching."""

import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from discadapt.evaluators.vqa import BLIPVQAScorer, noun_phrases
from discadapt.testing import tiny_blip_vqa_folder

COMPBENCH = Path("/work/shared/data/prompts/t2i-compbench")
PROMPTS = ["a green bench and a blue bowl", "a red book on the left of a yellow cup", "a photo of a cat"]
QUESTIONS = ["a green bench?", "a yellow cup?", "a cat with a red book?"]


# ---- the splitter ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt, phrases",
    [
        ("a green bench and a blue bowl", ["a green bench", "a blue bowl"]),
        ("a red book on the left of a yellow cup", ["a red book", "a yellow cup"]),
        ("a photo of a cat", ["a cat"]),
        ("A photo of a dog in front of a car.", ["a dog", "a car"]),
        ("a cat with a hat, a dog under a table", ["a cat", "a hat", "a dog", "a table"]),
        (
            "two white sheep, a black goat and a white goat in a field",
            ["two white sheep", "a black goat", "a white goat", "a field"],
        ),
        (
            "A long, narrow yellow kitchen with black and white floor tiles.",
            ["A long, narrow yellow kitchen", "black and white floor tiles"],
        ),
        ("a cat, a dog", ["a cat", "a dog"]),
        ("a vase on top of a table beside a lamp", ["a vase", "a table", "a lamp"]),
        ("a lamp", ["a lamp"]),
        ("and", ["and"]),  # nothing left after cutting: the whole prompt
    ],
)
def test_noun_phrases_rules(prompt, phrases):
    assert noun_phrases(prompt) == phrases


@pytest.mark.skipif(not COMPBENCH.is_dir(), reason="T2I-CompBench prompt lists not present")
@pytest.mark.parametrize("category", ["color", "texture"])
def test_noun_phrases_on_attribute_binding_prompts(category):
    lines = (COMPBENCH / f"{category}_val.txt").read_text().splitlines()[:25]
    for line in lines:
        assert noun_phrases(line) == [half.strip() for half in line.split(" and ")], line


@pytest.mark.skipif(not COMPBENCH.is_dir(), reason="T2I-CompBench prompt lists not present")
def test_noun_phrases_on_spatial_prompts():
    relation = re.compile(r" (?:next to|near|on (?:the )?(?:top|bottom|left|right|side) of) ")
    for line in (COMPBENCH / "spatial_val.txt").read_text().splitlines()[:40]:
        assert noun_phrases(line) == relation.split(line), line


@pytest.mark.parametrize("prompt", ["", "  ?", None])
def test_noun_phrases_rejects_empty_prompts(prompt):
    with pytest.raises(ValueError, match=r"`prompt` is .*; pass a prompt with at least one word"):
        noun_phrases(prompt)


# ---- a tiny BLIP-VQA -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return tiny_blip_vqa_folder(tmp_path_factory.mktemp("blip_vqa"), seed=0)


@pytest.fixture(scope="module")
def scorer(blip_dir):
    return BLIPVQAScorer.from_pretrained(blip_dir, batch_size=3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)  # (N, H, W, 3)


def _p_yes_from_loss(folder, image, question):
    """P(yes) one question at a time, from `BlipForQuestionAnswering.forward`'s mean token loss on each answer."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    model, processor = BlipForQuestionAnswering.from_pretrained(folder).eval(), BlipProcessor.from_pretrained(folder)
    inputs = processor(images=PIL.Image.fromarray(image), text=question, return_tensors="pt")
    log_likelihood = []
    for answer in ("yes", "no"):
        labels = processor.tokenizer(answer, return_tensors="pt").input_ids  # [CLS] answer [SEP]
        labels[0, 0] = model.config.text_config.bos_token_id  # the decoder starts from [DEC]
        with torch.no_grad():
            loss = model(**inputs, labels=labels).loss  # mean over the predicted tokens
        log_likelihood.append(-loss * (labels.shape[1] - 1))
    return torch.sigmoid(log_likelihood[0] - log_likelihood[1])


def test_from_pretrained_names_the_model(scorer, blip_dir):
    assert scorer.name == "BLIP-VQA"
    assert scorer.model == f"BlipForQuestionAnswering at {blip_dir}"


def test_answer_matches_the_models_own_loss(scorer, blip_dir, images):
    p_yes = scorer.answer(images, QUESTIONS)
    assert p_yes.shape == (3,) and p_yes.dtype == torch.float32 and p_yes.device.type == "cpu"
    expected = torch.stack([_p_yes_from_loss(blip_dir, im, q) for im, q in zip(images, QUESTIONS)])
    torch.testing.assert_close(p_yes, expected, rtol=1e-5, atol=1e-5)
    assert p_yes.std() > 0.05  # the tiny model tells questions apart, and images
    assert scorer.answer(images, QUESTIONS[:1] * 3).std() > 0.05


def test_score_is_the_product_over_phrases(scorer, images):
    scores = scorer.score(images, PROMPTS)
    for image, prompt, score in zip(images, PROMPTS, scores):
        phrases = noun_phrases(prompt)
        p_yes = scorer.answer(np.stack([image] * len(phrases)), [f"{p}?" for p in phrases])
        torch.testing.assert_close(score, p_yes.prod(), rtol=1e-5, atol=1e-6)
    assert ((scores > 0) & (scores < 1)).all()


def test_batching_and_image_formats_do_not_change_scores(blip_dir, scorer, images):
    one_by_one = BLIPVQAScorer.from_pretrained(blip_dir, batch_size=1)
    batched = scorer.score(images, PROMPTS)
    torch.testing.assert_close(batched, one_by_one.score(images, PROMPTS), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        scorer.answer(images, QUESTIONS), one_by_one.answer(images, QUESTIONS), rtol=0, atol=1e-5
    )
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) in [0, 1]
    pil = [PIL.Image.fromarray(im) for im in images]
    torch.testing.assert_close(scorer.score(floats, PROMPTS), batched, rtol=0, atol=1e-6)
    torch.testing.assert_close(scorer.score(pil, PROMPTS), batched, rtol=0, atol=1e-6)


def test_missing_folder_names_the_path_and_the_download(tmp_path):
    missing = tmp_path / "blip-vqa-base"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as err:
        BLIPVQAScorer.from_pretrained(missing)
    assert f"huggingface-cli download Salesforce/blip-vqa-base --local-dir {missing}" in str(err.value)


def test_bad_arguments_are_named(scorer, images):
    with pytest.raises(ValueError, match="Got 3 images but 2 prompts"):
        scorer.score(images, PROMPTS[:2])
    with pytest.raises(ValueError, match="`prompt` is ''"):
        scorer.score(images[:1], [""])
    with pytest.raises(ValueError, match="`batch_size` is 0; pass an int >= 1"):
        BLIPVQAScorer(scorer.net, scorer.processor, batch_size=0)
    with pytest.raises(ValueError, match="`model` is a Linear; pass a transformers BlipForQuestionAnswering"):
        BLIPVQAScorer(torch.nn.Linear(2, 2), scorer.processor)
    with pytest.raises(ValueError, match="`processor` is a str; pass the model's BlipProcessor"):
        BLIPVQAScorer(scorer.net, "processor")
