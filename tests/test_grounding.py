"""Cross-attention maps and the grounding loss of stage 2 (`cross_attention`, `losses.grounding`,
`TuneConfig.grounding_weight`, `ShapeWorldItems(phrase_boxes=...)`)."""

import argparse
import json

import numpy as np
import PIL.Image
import pytest
import torch

from discadapt import DiscriminativeAdapter
from discadapt.cross_attention import CrossAttentionMaps
from discadapt.losses import attention_grounding_loss, attention_shares
from discadapt.losses.grounding import uniform_shares
from discadapt.scoring import add_noise, encode_images
from discadapt.testing import tiny_sd_pipeline
from discadapt.text import encode_text
from discadapt.train import TuneConfig, train_tune
from discadapt.train import objective as objective_module
from discadapt.train.data import BatchBuilder, phrase_token_mask
from discadapt.train.tune import add_lora
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems
from discadapt.worlds.shapes.captions import parse
from discadapt.worlds.shapes.semantics import matching

SMALL = {"hidden_size": 32, "num_heads": 2, "decoder_layers": 1, "num_itm_queries": 2, "num_rec_queries": 3}


def _config(**changes) -> TuneConfig:
    base = {"steps": 2, "batch_size": 2, "lr": 1e-3, "adapter_config": SMALL, "lora_rank": 4, "itm_weight": 0}
    return TuneConfig(**{**base, "rec_weight": 0, **changes})


def _items() -> list[dict]:
    """Two squares each; the first item's boxes name the caption's own words (grounded), the second has none."""
    image = np.full((32, 32, 3), 40, dtype=np.uint8)
    image[4:14, 2:12], image[18:28, 20:30] = (225, 45, 45), (40, 70, 235)
    caption = "a red square and a blue square"
    grounded = {
        "image": PIL.Image.fromarray(image),
        "caption": caption,
        "neg_captions": ["a blue square and a red square"],
        "phrase": caption,
        "boxes": [[7 / 32, 9 / 32, 10 / 32, 10 / 32], [25 / 32, 23 / 32, 10 / 32, 10 / 32]],
        "box_spans": [[(2, 12)], [(19, 30)]],
    }
    other = {"image": PIL.Image.fromarray(image[:, ::-1].copy()), "caption": "two squares", "neg_captions": ["a disc"]}
    return [grounded, other]


def test_maps_leave_the_output_alone_sum_to_one_and_carry_the_lora_gradient():
    pipe = tiny_sd_pipeline()
    add_lora(pipe.unet, _config())
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:  # a nonzero update, so that the LoRA's A matrices get a gradient
            torch.nn.init.normal_(p, std=0.1)
    processors = dict(pipe.unet.attn_processors)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([100, 900])
    text = encode_text(pipe, ["a red square", "a blue disc"]).encoder_hidden_states
    expected = pipe.unet(x, t, text).sample
    maps = CrossAttentionMaps(pipe.unet)
    with maps:
        got = pipe.unet(x, t, text).sample
    torch.testing.assert_close(got, expected)
    assert dict(pipe.unet.attn_processors) == processors  # put back
    assert len(maps) == len(maps.layers) == 7  # transformer blocks (attn2): one per down block, mid, two per up block
    grids = [CrossAttentionMaps.grid(m.shape[1], 16, 16) for m in maps]
    assert grids == [(8, 8), (4, 4), (4, 4), (4, 4), (4, 4), (8, 8), (8, 8)]
    for m in maps:
        assert m.shape[::2] == (2, 77)
        torch.testing.assert_close(m.sum(dim=-1), torch.ones(m.shape[:2]))
    sum(m[:, :, 2].sum() for m in maps).backward()
    grads = {n: p.grad for n, p in pipe.unet.named_parameters() if "attn2.to_k.lora_A" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_shares_are_one_inside_the_box_the_box_area_when_uniform_and_unite_one_phrases_boxes():
    tokens = torch.zeros(2, 6, dtype=torch.bool)
    tokens[:, 2] = True  # both boxes named by token 2 ("two squares"): one phrase, one united mask
    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])  # the top-left and bottom-right quarters
    uniform = torch.full((1, 16, 6), 1 / 6)
    inside = torch.zeros(1, 4, 4, 6)
    inside[0, 3, 3, 2] = inside[0, 0, 1, 2] = 1.0  # token 2 attends at one pixel of each quarter
    shares = attention_shares([uniform, inside.flatten(1, 2)], [(4, 4), (4, 4)], [boxes], [tokens])
    torch.testing.assert_close(shares, torch.tensor([[0.5], [1.0]]))
    torch.testing.assert_close(uniform_shares([(4, 4)], [boxes], [tokens]), shares[:1])  # uniform: the boxes' area
    loss = attention_grounding_loss([uniform, inside.flatten(1, 2)], [(4, 4)] * 2, [boxes], [tokens])
    assert loss.item() == pytest.approx(0.125)  # ((1 - .5)^2 + 0) / 2
    with pytest.raises(ValueError, match="one \\(h, w\\) per attention map"):
        attention_shares([uniform], [], [boxes], [tokens])


def test_the_objective_grounds_the_pairs_whose_boxes_name_their_caption():
    items, pipe = _items(), tiny_sd_pipeline()
    config = _config(grounding_weight=3.0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, config.layers, **config.adapter_config)
    loss_module = objective_module.DiscriminativeLoss(pipe, adapter, config, train_unet=True)
    builder = BatchBuilder(items, pipe.tokenizer, (4, 16, 16), 32, 1000, 0, 1, 0, random_negatives=False, denoise=True)
    batch = builder.build([(0, 0), (1, 1)])
    with torch.no_grad():
        latents, text = encode_images(pipe, batch.images), encode_text(pipe, batch.texts)
        losses = loss_module(latents, text, batch, 1.0)
        d = batch.denoise_images.tolist().index(0)
        t, noise = batch.denoise_timesteps[d : d + 1], batch.denoise_noise[d : d + 1]
        x_t = add_noise(pipe.scheduler.alphas_cumprod, latents[:1], noise, t)
        with CrossAttentionMaps(pipe.unet) as maps:
            pipe.unet(x_t, t, encode_text(pipe, [items[0]["caption"]]).encoder_hidden_states)
    words = phrase_token_mask(pipe.tokenizer, items[0]["phrase"], items[0]["box_spans"], 77)
    grids = [CrossAttentionMaps.grid(m.shape[1], 16, 16) for m in maps]
    expected = attention_grounding_loss(list(maps), grids, [torch.tensor(items[0]["boxes"])], [words])
    torch.testing.assert_close(losses["loss_grounding"], expected, rtol=1e-4, atol=1e-6)
    assert losses["loss"].item() == pytest.approx(losses["loss_denoise"].item() + 3 * expected.item(), rel=1e-5)
    assert not loss_module.maps and all(not hasattr(p, "maps") for p in pipe.unet.attn_processors.values())


def test_tune_on_the_grounding_loss_alone_moves_the_lora(tmp_path):
    pipe = tiny_sd_pipeline()
    config = _config(grounding_weight=1.0, denoise_weight=0)
    result = train_tune(pipe, _items(), tmp_path / "run", config, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logged and all(line["loss"] == pytest.approx(line["loss_grounding"]) for line in logged)
    assert all(line["loss_grounding"] > 0 and "loss_denoise" not in line for line in logged)
    lora = {k: v for k, v in pipe.unet.state_dict().items() if "lora_B" in k}
    assert result["done"] and any(v.abs().sum() > 0 for v in lora.values())
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["config"]["grounding_weight"] == 1.0


def test_grounding_settings_are_checked():
    with pytest.raises(ValueError, match=r"`grounding_weight` is -1; pass a finite number >= 0"):
        TuneConfig(grounding_weight=-1)
    with pytest.raises(ValueError, match=r"set `gradient_checkpointing=False` or `grounding_weight=0`"):
        TuneConfig(grounding_weight=1.0, gradient_checkpointing=True)
    TuneConfig(grounding_weight=1.0, itm_weight=0, rec_weight=0, denoise_weight=0)  # grounding alone trains
    assert "grounding_weight" not in TuneConfig().to_dict()  # runs recorded before the option still resume
    with pytest.raises(ValueError, match="no cross-attention layer"):
        CrossAttentionMaps(torch.nn.Linear(2, 2))


def test_shapes_items_give_every_phrase_its_objects_boxes_and_words():
    items = ShapeWorldItems(10, phrase_boxes="objects", negative_images=False)
    plain = ShapeWorldItems(10, negative_images=False)
    assert items.fingerprint["phrase_boxes"] == "objects" and "phrase_boxes" not in plain.fingerprint
    for index in range(10):
        item, example = items[index], items.example(index)
        if example.caption.category == "referring":
            assert item["boxes"] == plain[index]["boxes"] and "box_spans" not in item
            continue
        assert "boxes" not in plain[index] and item["phrase"] == item["caption"]
        assert len(item["boxes"]) == len(item["box_spans"]) >= 1
        for box, spans in zip(item["boxes"], item["box_spans"]):
            ((start, end),) = spans
            words = item["caption"][start:end]
            number = item["caption"][:start] if example.caption.category == "counting" else "a "  # "three "
            phrase = parse(number + words).phrases[0]
            assert any(list(o.cxcywh) == box for o in matching(example.scene.objects, phrase))


def test_tune_world_tuned_grounds_on_the_bundled_tuned_model(tmp_path):
    from discadapt.cli import main as cli
    from discadapt.plugins import pipeline_from_args, source_name
    from discadapt.worlds.shapes.bundle import load_lora, load_pipeline

    args = ["tune", "--world-tuned", "--steps", "1", "--batch-size", "2", "--shapes", "8", "--eval-shapes", "0"]
    args += ["--lora-rank", "2", "--grounding-weight", "1", "--shapes-phrase-boxes", "--no-progress"]
    assert cli([*args, "--out", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert record["run"]["dataset"]["fingerprint"]["phrase_boxes"] == "objects"
    assert record["config"]["grounding_weight"] == 1.0
    logged = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert logged["loss_grounding"] > 0
    namespace = argparse.Namespace(tiny=False, world=False, world_tuned=True, pipeline=None)
    assert source_name(namespace) == "world-tuned"
    tuned, expected, base = pipeline_from_args(namespace).unet, load_lora(load_pipeline()).unet, load_pipeline().unet
    name = "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(tuned.state_dict()[name], expected.state_dict()[name])
    assert not torch.equal(tuned.state_dict()[name], base.state_dict()[name])


def test_planned_boxes_are_the_halves_a_spatial_relation_plans():
    items = ShapeWorldItems(15, phrase_boxes="planned", negative_images=False)
    second = ShapeWorldItems(15, phrase_boxes="planned-second", negative_images=False)
    objects = ShapeWorldItems(15, phrase_boxes="objects", negative_images=False)
    halves = {
        "left of": ([0.25, 0.5, 0.5, 1.0], [0.75, 0.5, 0.5, 1.0]),
        "above": ([0.5, 0.25, 1.0, 0.5], [0.5, 0.75, 1.0, 0.5]),
    }
    halves["right of"], halves["below"] = halves["left of"][::-1], halves["above"][::-1]
    seen = set()
    for index in range(15):
        item, caption = items[index], items.example(index).caption
        seen.add(caption.category)
        if caption.category == "spatial":
            assert item["boxes"] == list(halves[caption.relation])
            assert item["box_spans"] == objects[index]["box_spans"]  # the same words, one box each
            # the phrase after the relation only
            assert second[index]["boxes"] == item["boxes"][1:] and second[index]["box_spans"] == item["box_spans"][1:]
        elif caption.category != "referring":
            assert item["boxes"] == [] and item["box_spans"] == []  # no plan: nothing to ground
            assert second[index]["boxes"] == [] and second[index]["box_spans"] == []
    assert "spatial" in seen
    with pytest.raises(ValueError, match="`phrase_boxes` is 'boxes'; pick one of objects, planned, planned-second"):
        ShapeWorldItems(3, phrase_boxes="boxes")
