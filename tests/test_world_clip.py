"""Fast tests of the shapes world's CLIP (`discadapt.worlds.shapes.clip`) on tiny models and a few steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import CLIPModel

from discadapt.testing import assert_same_state
from discadapt.tokenizer import clip_tokenizer
from discadapt.train.runs import RunDir
from discadapt.worlds.shapes import CATEGORIES, KINDS, make_dataset, render
from discadapt.worlds.shapes.clip import (
    WorldClipConfig,
    WorldClipSizes,
    clip_logits,
    clip_scores,
    evaluate_world_clip,
    make_world_clip,
    preprocess,
    tokenize,
    world_clip_loss,
)
from discadapt.worlds.shapes.clip.train import examples_of_step, load_world_clip, train_world_clip
from discadapt.worlds.shapes.models import CLIP_BOS, CLIP_EOS, count_parameters


def load_checkpoint(out):
    return RunDir(out).load_checkpoint()


TINY = dict(steps=3, batch_size=4, sizes=WorldClipSizes.tiny(), progress=False, warmup_steps=1)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A tiny run of 3 steps without interruption."""
    out = tmp_path_factory.mktemp("straight")
    return out, train_world_clip(out, **TINY)


@pytest.fixture(scope="module")
def examples():
    data = make_dataset(5, split="test_id", seed=0, image_size=32)
    return data, np.stack([render(e.scene) for e in data])


def test_model_is_seeded_sized_and_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    a, b = make_world_clip(WorldClipSizes.tiny(), seed=3), make_world_clip(WorldClipSizes.tiny(), seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert_same_state(a.state_dict(), b.state_dict())
    c = make_world_clip(WorldClipSizes.tiny(), seed=4)
    assert not torch.equal(
        a.vision_model.embeddings.patch_embedding.weight, c.vision_model.embeddings.patch_embedding.weight
    )
    text, vision = a.config.text_config, a.config.vision_config
    assert (text.vocab_size, text.max_position_embeddings, text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
        49408,
        77,
        CLIP_BOS,
        CLIP_EOS,
        CLIP_EOS,
    )
    assert (vision.image_size, vision.patch_size, vision.num_channels, a.config.projection_dim) == (32, 8, 3, 32)
    assert a.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert count_parameters(a) == 1_617_889
    assert count_parameters(make_world_clip()) == 3_624_225  # the defaults, 49,408 x 64 of them token embedding
    # a config's sizes and temperature
    model = make_world_clip(WorldClipConfig(temperature=0.5, sizes=WorldClipSizes.tiny()))
    assert model.logit_scale.item() == pytest.approx(math.log(2))


def test_preprocess_maps_uint8_to_minus_one_one():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[0, 1, 2] = (255, 0, 51)  # row 1, column 2
    x = preprocess(images)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert x[0, :, 1, 2].tolist() == pytest.approx([1.0, -1.0, 51 / 127.5 - 1])
    assert torch.equal(preprocess(torch.from_numpy(images)), x) and torch.equal(preprocess(list(images)), x)
    x[0, :, 1, 2] = -1
    assert torch.equal(x, torch.full_like(x, -1.0))  # every other value
    with pytest.raises(ValueError, match=r"`images` has shape \(2, 32, 32, 3\) and dtype float32; pass uint8"):
        preprocess(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"`images` has shape \(32, 32, 3\)"):
        preprocess(images[0])


def test_tokenize_pads_with_eos_and_matches_77_padding():
    ids = tokenize(["a red circle", "two red circles"])
    assert ids.tolist() == [[49406, 320, 736, 7117, 49407], [49406, 1237, 736, 19411, 49407]]
    ids = tokenize(["a red circle", "a red circle to the left of a blue square"])
    assert ids.shape == (2, 12) and ids[0, 4:].tolist() == [CLIP_EOS] * 8
    with pytest.raises(ValueError, match="`texts` is 'a red circle'; pass a non-empty list"):
        tokenize("a red circle")
    # the pooled (first eos) embedding does not depend on the padding length
    model = make_world_clip(WorldClipSizes.tiny(), seed=0)
    texts = ["a red circle", "three green triangles", "the large red circle on the left"]
    full = clip_tokenizer()(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        short = model.text_model(input_ids=tokenize(texts)).pooler_output
        long = model.text_model(input_ids=full).pooler_output
    torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-6)


def test_scores_equal_the_transformers_forward(examples):
    data, images = examples
    model = make_world_clip(WorldClipSizes.tiny(), seed=0)
    texts = [e.caption.text for e in data]
    scores = clip_scores(model, images, texts, batch_size=2)
    assert scores.shape == (5,) and scores.dtype == torch.float32
    ids = clip_tokenizer()(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=preprocess(images)).logits_per_image  # (5 images, 5 texts)
    torch.testing.assert_close(scores, expected.diagonal(), rtol=1e-4, atol=1e-4)
    # multiple choice: ragged lists, -inf where an image has fewer candidates
    choices = [[texts[0], texts[1]], [texts[1]], [texts[2], texts[0], texts[4]], [texts[3]], [texts[4], texts[2]]]
    logits = clip_logits(model, images, choices, batch_size=2)
    assert logits.shape == (5, 3)
    for i, row in enumerate(choices):
        for k, text in enumerate(row):
            torch.testing.assert_close(logits[i, k], expected[i, texts.index(text)], rtol=1e-4, atol=1e-4)
        assert torch.isinf(logits[i, len(row) :]).all() and (logits[i, len(row) :] < 0).all()
    with pytest.raises(ValueError, match=r"`texts` is \['a'\]; pass a list of one caption string per image \(5\)"):
        clip_scores(model, images, ["a"])
    with pytest.raises(ValueError, match="`texts_per_image` has 1 entries for 5 images"):
        clip_logits(model, images, [["a"]])
    with pytest.raises(ValueError, match=r"`texts_per_image\[1\]` is \[\]; pass a non-empty list"):
        clip_logits(model, images, [["a"], [], ["a"], ["a"], ["a"]])


def _reference_loss(image, text, negatives, owner, scale, valid, weight):
    """The loss of `world_clip_loss`, written out by hand in float64 from its docstring."""
    b = len(image)

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def cos(u, v):
        return sum(x * y for x, y in zip(unit(u), unit(v)))

    def ce(first, others):  # -log softmax of `first` among first + others
        values = [first, *others]
        top = max(values)
        return -(first - top - math.log(sum(math.exp(x - top) for x in values)))

    s = [[scale * cos(image[i], text[j]) for j in range(b)] for i in range(b)]
    rows = [ce(s[i][i], [s[i][j] for j in range(b) if j != i and valid[i][j]]) for i in range(b)]
    cols = [ce(s[j][j], [s[i][j] for i in range(b) if i != j and valid[i][j]]) for j in range(b)]
    contrastive = (sum(rows) / b + sum(cols) / b) / 2
    hard = 0.0
    for i in range(b):
        h = [scale * cos(image[i], n) for n, o in zip(negatives, owner) if o == i]
        hard += ce(s[i][i], h + [s[i][j] for j in range(b) if j != i and valid[i][j]])
    hard /= b
    return contrastive + weight * hard, contrastive, hard


def test_loss_equals_a_float64_hand_computation():
    g = torch.Generator().manual_seed(0)
    image, text, negatives = (torch.randn(n, 5, generator=g) for n in (3, 3, 4))
    owner = torch.tensor([0, 0, 2, 0])  # image 1 has no hard negative
    valid = torch.tensor([[True, False, True], [True, True, True], [True, True, False]])  # diagonal ignored
    for mask in (valid, None):
        out = world_clip_loss(image, text, negatives, owner, torch.tensor(7.5), mask, hard_negative_weight=0.5)
        plain = (mask if mask is not None else torch.ones(3, 3, dtype=torch.bool)).tolist()
        expected = _reference_loss(
            image.double().tolist(),
            text.double().tolist(),
            negatives.double().tolist(),
            owner.tolist(),
            7.5,
            plain,
            0.5,
        )
        got = (out["loss"].item(), out["contrastive"].item(), out["hard"].item())
        assert got == pytest.approx(expected, rel=1e-5)
    # gradients flow into every input and the scale
    leaves = [t.clone().requires_grad_() for t in (image, text, negatives)]
    scale = torch.tensor(7.5, requires_grad=True)
    world_clip_loss(*leaves, owner, scale, valid)["loss"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in [*leaves, scale])
    # no hard negatives at all: the hard term is the text side of the in-batch loss
    out = world_clip_loss(image, text, torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), torch.tensor(2.0))
    assert out["hard"].item() == pytest.approx(_reference_loss(image.tolist(), text.tolist(), [], [], 2.0, plain, 1)[2])
    with pytest.raises(ValueError, match=r"`negative_owner` is \[0, 3\]; pass one image index in 0..2"):
        world_clip_loss(image, text, negatives[:2], torch.tensor([0, 3]), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"`valid` has shape \(2, 2\); pass a bool \(3, 3\) mask"):
        world_clip_loss(image, text, negatives, owner, torch.tensor(1.0), valid[:2, :2])
    with pytest.raises(ValueError, match=r"pass two \(B, P\) tensors, B >= 2"):
        world_clip_loss(image[:1], text[:1], negatives, owner, torch.tensor(1.0))


def test_training_writes_a_loadable_model(straight, examples):
    out, result = straight
    assert result["done"] and result["step"] == 3 and result["model"] == str(out / "model")
    assert all(np.isfinite(result[k]) and result[k] > 0 for k in ("loss", "contrastive", "hard"))
    assert result["parameters"] == 1_617_889
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3] and logged[-1]["loss"] == result["loss"]
    assert json.loads((out / "model" / "train_step.json").read_text()) == {"step": 3}
    loaded = load_world_clip(out)
    assert isinstance(loaded, CLIPModel) and not loaded.training
    assert_same_state(dict(loaded.state_dict()), load_checkpoint(out).trainable)
    data, images = examples
    texts = [e.caption.text for e in data]
    torch.testing.assert_close(clip_scores(loaded, images, texts), clip_scores(loaded, images, texts, batch_size=1))
    again = train_world_clip(out, **TINY)  # finished: nothing more to do
    assert again["step"] == 3 and again["loss"] is None and again["steps_per_s"] is None


def test_resume_reaches_the_same_weights(straight, tmp_path):
    args = {**TINY, "checkpoint_every": 2}  # does not change the weights
    first = train_world_clip(tmp_path, stop_after=1, **args)
    assert first["step"] == 1 and not first["done"] and first["model"] is None
    assert not (tmp_path / "model").exists()
    partial = load_world_clip(tmp_path)  # an unfinished run: the newest checkpoint's weights
    assert_same_state(dict(partial.state_dict()), load_checkpoint(tmp_path).trainable)
    second = train_world_clip(tmp_path, **args)
    assert second["done"] and second["step"] == 3
    # the newest 2 are kept, no temporary folder is left behind
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    assert_same_state(vars(load_checkpoint(tmp_path)), vars(load_checkpoint(straight[0])))  # model, optimizer, step
    assert second["loss"] == straight[1]["loss"]


def test_config_mismatch_on_resume_names_the_fields(tmp_path):
    train_world_clip(tmp_path, stop_after=1, **TINY)
    saved = (tmp_path / "train_config.json").read_text()
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"another configuration \(config.seed: saved 0, now 1\)"):
        train_world_clip(tmp_path, **{**TINY, "seed": 1})
    with pytest.raises(ValueError, match="config.sizes.vision_layers: saved 1, now 2"):
        train_world_clip(
            tmp_path, **{**TINY, "sizes": WorldClipSizes(**{**WorldClipSizes.tiny().to_dict(), "vision_layers": 2})}
        )
    with pytest.raises(
        ValueError,
        match="config.batch_size: saved 4, now 5; config.lr: saved 0.002, now 0.001; config.steps: saved 3, now 4",
    ):
        train_world_clip(tmp_path, **{**TINY, "batch_size": 5, "lr": 1e-3, "steps": 4})
    assert (tmp_path / "train_config.json").read_text() == saved
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == checkpoints


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(steps=0), "`steps` is 0; pass an int >= 1"),
        (dict(steps=2.5), "`steps` is 2.5"),
        (dict(batch_size=1), "`batch_size` is 1; pass an int >= 2"),
        (dict(seed=-1), "`seed` is -1"),
        (dict(lr=0.0), "`lr` is 0.0; pass a float > 0"),
        (dict(weight_decay=-1.0), "`weight_decay` is -1.0"),
        (dict(negatives=7), "`negatives` is 7; pass an int from 0 to 6"),
        (dict(temperature=0.0), r"`temperature` is 0.0; pass a float in \(0, 1\]"),
        (dict(stop_after=0), "`stop_after` is 0"),
        (dict(category_weights={"colours": 1.0}), r"`category_weights` names \['colours'\]"),
        (dict(category_weights={"single": 0.0}), "not all 0"),
        (dict(learning_rate=1e-3), r"unknown options \['learning_rate'\]"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        train_world_clip(tmp_path / "run", **{**TINY, **change})
    assert not (tmp_path / "run").exists()


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="`patch_size` is 5, which does not divide `image_size` 32"):
        WorldClipSizes(patch_size=5)
    with pytest.raises(ValueError, match="`vision_hidden` 30 is not a multiple of `vision_heads` 4"):
        WorldClipSizes(vision_hidden=30)
    with pytest.raises(ValueError, match="`image_size` is 16; pass an int >= 32"):
        WorldClipSizes(image_size=16)
    with pytest.raises(ValueError, match="`text_layers` is 0; pass an int >= 1"):
        WorldClipSizes(text_layers=0)
    with pytest.raises(ValueError, match="`sizes` is 3; pass a WorldClipSizes or a WorldClipConfig"):
        make_world_clip(3)


def test_unused_token_rows_keep_their_initial_values(straight):
    """Bundles store only the token-embedding rows the world uses; the others must equal the seeded init."""
    out, _ = straight
    trained = load_checkpoint(out).trainable["text_model.embeddings.token_embedding.weight"]
    initial = make_world_clip(WorldClipSizes.tiny(), seed=0).text_model.embeddings.token_embedding.weight.detach()
    config = WorldClipConfig(**{k: v for k, v in TINY.items() if k != "progress"})
    used = set()
    for step in range(config.steps):
        batch, chosen = examples_of_step(config, step)
        texts = [e.caption.text for e in batch] + [
            e.negatives[k].caption.text for e, ks in zip(batch, chosen) for k in ks
        ]
        used |= set(tokenize(texts).flatten().tolist())
    changed = set((trained != initial).any(dim=1).nonzero().flatten().tolist())
    assert CLIP_BOS in changed and CLIP_EOS in changed and changed <= used and len(changed) >= 6
    keep = torch.ones(len(initial), dtype=torch.bool)
    keep[sorted(changed)] = False
    assert torch.equal(trained[keep], initial[keep])
    # the token embedding has its own optimizer group, without weight decay
    groups = load_checkpoint(out).optimizer["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0, 0.0] and len(groups[2]["params"]) == 1


def test_evaluate_reports_every_category(straight):
    model = load_world_clip(straight[0])
    result = evaluate_world_clip(model, n=4, split="test_ood", seed=1)
    assert result["n"] == 4 and result["split"] == "test_ood"
    assert set(result["text"]) == set(result["image"]) == {*CATEGORIES, "all"}
    assert set(result["kinds"]) <= set(KINDS) and {"wrong_color", "wrong_shape"} <= set(result["kinds"])
    for part in ("text", "image", "kinds"):
        assert all(0 <= v <= 1 for v in result[part].values())
    # the text side, recomputed from clip_logits
    data = make_dataset(4, split="test_ood", seed=1, categories=["counting"], image_size=32)
    choices = [[e.caption.text] + [n.caption.text for n in e.negatives] for e in data]
    logits = clip_logits(model, np.stack([render(e.scene) for e in data]), choices)
    wins = [bool(row[0] > row[1 : len(c)].max()) for row, c in zip(logits, choices)]
    assert result["text"]["counting"] == sum(wins) / 4
    assert result["text"]["all"] == pytest.approx(np.mean([result["text"][c] for c in CATEGORIES]))
    with pytest.raises(ValueError, match="`n` is 0; pass an int >= 1"):
        evaluate_world_clip(model, n=0)
    with pytest.raises(ValueError, match="`split` is 'val'; pick one of train, test_id, test_ood"):
        evaluate_world_clip(model, split="val")
    with pytest.raises(ValueError, match="`category` is 'colours'"):
        evaluate_world_clip(model, categories=["colours"])
