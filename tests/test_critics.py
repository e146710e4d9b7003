"""Critics of the interaction loop: each critic's scores against a direct computation, layouts planned from prompts,
the adapter's REC-checked suggestions, the VLM critic on a tiny random model with scripted replies (malformed ones
included), ensembles on a hand example, and missing weights failing at construction."""

import json
import logging
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from discadapt import DiscriminativeAdapter, denoising_score, encode_images, encode_text, itm_score
from discadapt.interaction import critics as C
from discadapt.sampling.regions import Region

PROMPTS = ["a red circle to the left of a blue square", "a green triangle", "a cat above a dog"]


@pytest.fixture(scope="module")
def adapter(sd_pipe):
    torch.manual_seed(0)
    return DiscriminativeAdapter.for_pipeline(sd_pipe, layers=["mid_block", "up_blocks.0"], hidden_size=32, num_heads=4)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]


# ---- layouts, regions, suggestions -----------------------------------------------------------------------------------
def test_plan_layout_reads_generic_relation_words():
    left, right, top, bottom = (0, 0, 0.5, 1), (0.5, 0, 1, 1), (0, 0, 1, 0.5), (0, 0.5, 1, 1)
    cases = {
        "a red circle to the left of a blue square": [(left, "a red circle"), (right, "a blue square")],
        "A cat is on the right side of a dog.": [(right, "A cat"), (left, "a dog")],
        "a lamp on top of a table": [(top, "a lamp"), (bottom, "a table")],
        "two birds over a lake": [(top, "two birds"), (bottom, "a lake")],
        "a ball under a chair": [(bottom, "a ball"), (top, "a chair")],
        "a red circle below a blue square": [(bottom, "a red circle"), (top, "a blue square")],
        "the circle on the left": [(left, "the circle")],
        "a boat at the bottom of the image": [(bottom, "a boat")],
        "a cat on the top of a sofa": [(top, "a cat"), (bottom, "a sofa")],  # T2I-CompBench's wording
        "a bicycle on the bottom of a girl": [(bottom, "a bicycle"), (top, "a girl")],
        "a cat next to a dog": [],
        "a red pullover": [],
        "left of a dog": [],
        "a cat": [],
    }
    for prompt, expected in cases.items():
        assert [(r.box, r.prompt) for r in C.plan_layout(prompt)] == expected, prompt
    assert C.parse_relation("a cat is above a dog") == C.Relation("a cat", "above", "a dog")
    assert C.relation_holds("left of", (0.0, 0.2, 0.3, 0.5), (0.6, 0.1, 0.9, 0.4))
    assert not C.relation_holds("above", (0.0, 0.6, 0.3, 0.9), (0.6, 0.1, 0.9, 0.4))
    assert C.relation_holds("bottom", (0.2, 0.6, 0.4, 0.9)) and not C.relation_holds("right", (0.0, 0, 0.2, 1))
    with pytest.raises(ValueError, match="`relation` is 'behind'"):
        C.relation_holds("behind", (0, 0, 1, 1), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="`prompt` is 3"):
        C.parse_relation(3)


def test_region_and_suggestion_checks_and_json_round_trip():
    s = C.Suggestion("a cat left of a dog", [Region((0, 0, 0.5, 1), "a cat")], reason="swapped")
    assert s.regions == (Region((0.0, 0.0, 0.5, 1.0), "a cat"),)
    assert C.Suggestion.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert C.Suggestion.from_dict({"prompt": "a cat"}) == C.Suggestion("a cat")
    with pytest.raises(ValueError, match=r"`box` is \(0.5, 0, 0.5, 1\)"):
        Region((0.5, 0, 0.5, 1), "x")
    with pytest.raises(ValueError, match=r"`box` is \(0, 0, 1.5, 1\)"):
        Region((0, 0, 1.5, 1), "x")
    with pytest.raises(ValueError, match="`prompt` is ''"):
        Region((0, 0, 1, 1), "")
    with pytest.raises(ValueError, match="`prompt` is ''"):
        C.Suggestion("")
    with pytest.raises(ValueError, match="`regions` holds"):
        C.Suggestion("a cat", [((0, 0, 1, 1), "a cat")])
    with pytest.raises(ValueError, match=r"`data\['regions'\]` is"):
        C.Suggestion.from_dict({"prompt": "a cat", "regions": [[0, 0, 1, 1]]})


def test_input_checks():
    with pytest.raises(ValueError, match="Got 2 images but 1 prompts"):
        C.check_pairs(torch.zeros(2, 3, 8, 8), ["a"])
    with pytest.raises(ValueError, match="`prompts` is 'a'"):
        C.check_pairs(torch.zeros(1, 3, 8, 8), "a")
    with pytest.raises(ValueError, match="this critic reads pixels"):
        C.to_pil(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        C.to_pil(torch.full((1, 3, 8, 8), 2.0))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    as_float = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255
    assert all(np.array_equal(np.asarray(a), p) for a, p in zip(C.to_pil(as_float), pixels))
    assert all(np.array_equal(np.asarray(a), p) for a, p in zip(C.to_pil(list(pixels)), pixels))


def test_bad_arguments_name_the_argument_and_the_fix(sd_pipe, adapter, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="`scorer` is a str; pass a scorers.Scorer"):
        C.ScorerCritic("clip")
    with pytest.raises(ValueError, match="`model` is a object; pass a transformers CLIPModel"):
        C.CLIPCritic(object(), None)
    with pytest.raises(ValueError, match="`data` is 'a cat'; pass a dict with 'prompt'"):
        C.Suggestion.from_dict("a cat")
    with pytest.raises(ValueError, match="`batch_size` is 0; pass an int >= 1 or None"):
        C.AdapterCritic(sd_pipe, adapter, batch_size=0)
    with pytest.raises(ValueError, match="`max_new_tokens` is 0; pass an int >= 1"):
        C.VLMCritic(reply_fn=str, max_new_tokens=0)
    with pytest.raises(ValueError, match="`critics` holds a str; pass scorers.Scorer"):
        C.EnsembleCritic([C.ScorerCritic(C.DenoisingCritic(sd_pipe)), "clip"])
    (tmp_path / "w.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as where torchvision is missing
    with pytest.raises(ImportError, match="OpenCLIPCritic needs open_clip.*pip install open_clip_torch"):
        C.OpenCLIPCritic("ViT-B-32", pretrained=tmp_path / "w.bin")


# ---- the pipeline's own critics --------------------------------------------------------------------------------------
def test_adapter_critic_scores_and_locates(sd_pipe, adapter, images):
    critic = C.AdapterCritic(sd_pipe, adapter, t=[100, 400], seed=3)
    assert isinstance(critic, C.Critic) and critic.name == "adapter"
    torch.testing.assert_close(
        critic.score(images, PROMPTS), itm_score(sd_pipe, adapter, images, PROMPTS, t=[100, 400])
    )
    phrases = ["a red circle", "a blue square", "a cat"]
    boxes, confidence = critic.locate(images, phrases)
    # by hand: one seeded noise draw per timestep, full UNet forward with plain hooks, the most confident query
    latents = encode_images(sd_pipe, images)
    noise = torch.randn((2, 1, 4, 16, 16), generator=torch.Generator().manual_seed(3))
    text = encode_text(sd_pipe, phrases)
    probs, cxcywh = [], []
    for k, t in enumerate([100, 400]):
        abar = sd_pipe.scheduler.alphas_cumprod[t]
        xt = abar.sqrt() * latents + (1 - abar).sqrt() * noise[k]
        grabbed = {}
        hooks = [
            sd_pipe.unet.mid_block.register_forward_hook(lambda m, a, o: grabbed.__setitem__("mid_block", o)),
            sd_pipe.unet.up_blocks[0].register_forward_hook(lambda m, a, o: grabbed.__setitem__("up_blocks.0", o)),
        ]
        with torch.no_grad():
            sd_pipe.unet(xt, torch.tensor([t] * 3), text.encoder_hidden_states)
            out = adapter(grabbed, torch.tensor([t] * 3), text_tokens=text.encoder_hidden_states)
        for h in hooks:
            h.remove()
        probs.append(out.rec_logits.softmax(-1)[..., 0])  # (3, Q)
        cxcywh.append(out.boxes)  # (3, Q, 4)
    prob, box = torch.cat(probs, 1), torch.cat(cxcywh, 1)  # (3, 2Q), (3, 2Q, 4)
    best = prob.argmax(1)
    cx, cy, w, h = box[torch.arange(3), best].unbind(-1)
    expected = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1)
    torch.testing.assert_close(boxes, expected)
    torch.testing.assert_close(confidence, prob.amax(1))
    found = critic.suggest(images, PROMPTS)  # the random head's boxes: a layout or None, per prompt
    assert len(found) == 3 and found[1] is None and all(s is None or isinstance(s, C.Suggestion) for s in found)
    with pytest.raises(ValueError, match="`t` is 1000"):
        C.AdapterCritic(sd_pipe, adapter, t=1000)
    with pytest.raises(ValueError, match="`adapter` is a str"):
        C.AdapterCritic(sd_pipe, "adapter")


def test_adapter_critic_suggests_a_layout_where_the_boxes_break_the_relation(sd_pipe, adapter, images, monkeypatch):
    critic = C.AdapterCritic(sd_pipe, adapter)
    left, right = [0.0, 0.0, 0.4, 0.4], [0.6, 0.6, 1.0, 1.0]
    scripted = {  # phrase -> box the REC head "finds"
        "a red circle": right,  # right of the square: breaks "left of"
        "a blue square": left,
        "a cat": left,  # above the dog (y down): holds
        "a dog": right,
    }
    asked = []

    def locate(images, phrases):
        asked.append(list(phrases))
        return torch.tensor([scripted[p] for p in phrases]), torch.ones(len(phrases))

    monkeypatch.setattr(critic, "locate", locate)
    first, second, third = critic.suggest(images, PROMPTS)
    assert asked == [["a red circle", "a blue square", "a cat", "a dog"]]  # one call, prompts with a relation only
    assert first.prompt == PROMPTS[0] and first.regions == tuple(C.plan_layout(PROMPTS[0]))
    assert "not left of" in first.reason
    assert second is None and third is None
    pixels = np.stack([np.asarray(i) for i in images])  # (3, 32, 32, 3) uint8: the same answers
    assert critic.suggest(pixels, PROMPTS) == [first, second, third]


def test_denoising_critic(sd_pipe, images):
    critic = C.DenoisingCritic(sd_pipe, num_timesteps=3)
    assert critic.name == "relative denoising error" and isinstance(critic, C.Critic)
    expected = denoising_score(sd_pipe, images, PROMPTS, num_timesteps=3, unconditional=True)
    torch.testing.assert_close(critic.score(images, PROMPTS), expected)
    layouts = critic.suggest(images, PROMPTS)
    assert layouts[0].regions == tuple(C.plan_layout(PROMPTS[0])) and layouts[1] is None
    assert C.DenoisingCritic(sd_pipe, layout=False).suggest(images, PROMPTS) == [None] * 3
    with pytest.raises(ValueError, match="`num_timesteps` is 0"):
        C.DenoisingCritic(sd_pipe, num_timesteps=0)


# ---- CLIP, aesthetic -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from discadapt import clip_tokenizer

    text = dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    size = {"shortest_edge": 32}
    processor = CLIPProcessor(CLIPImageProcessor(size=size, crop_size={"height": 32, "width": 32}), clip_tokenizer())
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _clip_logits(folder, images, prompts):
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
        return model, model(**inputs).logits_per_image.diagonal()


def test_clip_critic_matches_clip_logits(clip_dir, images):
    critic = C.CLIPCritic.from_pretrained(clip_dir)
    assert critic.name == "CLIP" and isinstance(critic, C.Critic)
    _, expected = _clip_logits(clip_dir, images, PROMPTS)
    torch.testing.assert_close(critic.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    pixels = np.stack([np.asarray(i) for i in images])  # (3, 32, 32, 3) uint8
    torch.testing.assert_close(critic.score(pixels, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    assert critic.suggest(images, PROMPTS)[2].regions == tuple(C.plan_layout(PROMPTS[2]))
    with pytest.raises(ValueError, match="`batch_size` is 0"):
        C.CLIPCritic(critic.model, critic.processor, batch_size=0)


def test_aesthetic_critic_is_the_head_on_normalised_clip_embeddings(clip_dir, images, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    head = C.AestheticHead(24).eval()
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    critic = C.AestheticCritic(clip_dir, tmp_path / "head.safetensors")
    model, _ = _clip_logits(clip_dir, images, PROMPTS)
    with torch.no_grad():
        pixels = critic.clip.processor(images=images, return_tensors="pt")["pixel_values"]
        embeds = F.normalize(C.clip.features(model.get_image_features(pixel_values=pixels)), dim=-1)
        expected = head.layers(embeds)[:, 0]
    torch.testing.assert_close(critic.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(critic.score(images, ["x", "y", "z"]), critic.score(images, PROMPTS))  # prompts ignored
    save_file(C.AestheticHead(768).state_dict(), tmp_path / "l14.safetensors")
    with pytest.raises(ValueError, match="does not fit an aesthetic head on this CLIP \\(projection width 24\\)"):
        C.AestheticCritic(clip_dir, tmp_path / "l14.safetensors")


def test_missing_weights_fail_at_construction(clip_dir, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"No model at .*nowhere.*huggingface-cli download openai/clip-vit"):
        C.CLIPCritic.from_pretrained(missing)
    with pytest.raises(
        FileNotFoundError, match=r"No aesthetic head at .*head.safetensors.*improved-aesthetic-predictor"
    ):
        C.AestheticCritic(clip_dir, tmp_path / "head.safetensors")
    with pytest.raises(FileNotFoundError, match=r"No model at .*nowhere.*openai/clip-vit-large-patch14"):
        C.AestheticCritic(missing, tmp_path / "head.safetensors")
    with pytest.raises(FileNotFoundError, match=r"No model at .*nowhere.*Qwen/Qwen2.5-VL-3B-Instruct"):
        C.VLMCritic.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match=r"No open_clip weights at .*model.bin.*laion/CLIP-ViT-H-14"):
        C.OpenCLIPCritic("ViT-B-32", pretrained=tmp_path / "model.bin")  # checked before open_clip is imported


def test_open_clip_critic(tmp_path, images):
    open_clip = pytest.importorskip("open_clip")  # imports torchvision, absent on the project's CPU machines
    vision = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    (tmp_path / "TinyCLIP-critic-test.json").write_text(
        json.dumps({"embed_dim": 16, "vision_cfg": vision, "text_cfg": text})
    )
    open_clip.add_model_config(tmp_path / "TinyCLIP-critic-test.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("TinyCLIP-critic-test", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.bin")
    critic = C.OpenCLIPCritic("TinyCLIP-critic-test", pretrained=tmp_path / "tiny.bin")
    with torch.no_grad():
        image = F.normalize(model.eval().encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        text = F.normalize(model.encode_text(open_clip.get_tokenizer("TinyCLIP-critic-test")(PROMPTS)), dim=-1)
    expected = model.logit_scale.exp() * (image * text).sum(-1)
    torch.testing.assert_close(critic.score(images, PROMPTS), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="`model_name` is 'ViT-Nope'"):
        C.OpenCLIPCritic("ViT-Nope", pretrained=tmp_path / "tiny.bin")


# ---- VLM -------------------------------------------------------------------------------------------------------------
def test_parse_reply_is_lenient_and_never_raises(caplog):
    prompt = "a cat to the left of a dog"
    review = C.parse_reply('{"score": 7, "prompt": "a small cat left of a big dog", "reason": "sizes"}', prompt)
    assert (review.score, review.ok, review.suggestion) == (
        7.0,
        True,
        C.Suggestion("a small cat left of a big dog", reason="sizes"),
    )
    fenced = 'Here you go:\n```json\n{"score": "8/10", "regions": [{"box": [0, 0, 0.5, 1], "prompt": "a cat"},]}\n```'
    review = C.parse_reply(fenced, prompt)
    assert review.score == 8.0 and review.suggestion == C.Suggestion(
        prompt, [Region((0, 0, 0.5, 1), "a cat")], "the VLM's suggestion"
    )
    boxes = (
        '{"score": 12, "regions": [{"box": [-0.2, 0.1, 0.5, 1.7], "prompt": "a cat"}, '
        '{"box": [1.2, 0, 1.5, 1], "prompt": "gone"}, {"box": [0, 0, 1], "prompt": "three"}, '
        '{"box": [0, 0, 1, 1]}, {"box": ["a", 0, 1, 1], "prompt": "text"}]}'
    )
    with caplog.at_level(logging.WARNING, logger="discadapt.interaction.critics.vlm"):
        review = C.parse_reply(boxes, prompt)
    assert review.score == 10.0 and review.suggestion.regions == (Region((0.0, 0.1, 0.5, 1.0), "a cat"),)
    assert "dropped 4 unusable region(s)" in caplog.text
    assert C.parse_reply('{"score": -3}', prompt).score == 0.0
    assert (
        C.parse_reply('{"score": 6, "prompt": "a cat to the left of a dog", "regions": []}', prompt).suggestion is None
    )
    assert C.parse_reply('{"note": 1} then {"score": 4}', prompt).score == 5.0  # the first object has no score
    assert C.parse_reply('{broken} {"score": 4}', prompt).score == 4.0  # the first *JSON* object
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="discadapt.interaction.critics.vlm"):
        for bad in [
            "I think it is fine.",
            '{"score": 7, "prompt": "trunc',
            '{"score": true}',
            '{"score": NaN}',
            "",
            '{"score": 3, "regions": "left half"}',
        ]:
            review = C.parse_reply(bad, prompt, fallback_score=2.5)
            assert review.score in (2.5, 3.0) and review.suggestion is None, bad
    assert caplog.text.count("WARNING") == 6


def _tiny_vlm(folder):
    """A random Llava (1-layer CLIP vision tower + 1-layer Llama) with a byte-level tokenizer and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<s>", "</s>", "<pad>", "<image>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=template,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_vlm_critic_on_a_tiny_random_model(tmp_path, images, monkeypatch, caplog):
    critic = C.VLMCritic.from_pretrained(_tiny_vlm(tmp_path / "vlm"), max_new_tokens=8)
    assert isinstance(critic, C.Critic) and critic.name == "VLM"
    # 1. the random model's 8 bytes cannot hold a JSON object with a score: logged, the fallback score, no suggestion
    with caplog.at_level(logging.WARNING, logger="discadapt.interaction.critics.vlm"):
        assert critic.score(images[:2], PROMPTS[:2]).tolist() == [5.0, 5.0]
    assert "VLM reply without" in caplog.text
    # 2. a scripted reply through generate, decoding and parsing; score then suggest generates once per image
    reply = 'Sure.\n```json\n{"score": 3, "regions": [{"box": [0, 0, 0.6, 1.4], "prompt": "a cat"}]}\n```'
    tokenizer, calls = critic.processor.tokenizer, []

    def generate(**inputs):
        calls.append(inputs)
        ids = tokenizer(reply, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        return torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)

    monkeypatch.setattr(critic.model, "generate", generate)
    assert critic.score(images[2:], PROMPTS[2:]).tolist() == [3.0]
    assert critic.suggest(images[2:], PROMPTS[2:]) == [
        C.Suggestion(PROMPTS[2], [Region((0, 0, 0.6, 1), "a cat")], "the VLM's suggestion")
    ]
    assert len(calls) == 1 and calls[0]["pixel_values"].shape == (1, 3, 16, 16)
    assert "a cat above a dog" in tokenizer.decode(calls[0]["input_ids"][0])


def test_vlm_critic_with_a_reply_function_and_bad_arguments(images):
    seen = []
    critic = C.VLMCritic(reply_fn=lambda image, request: seen.append(request) or '{"score": 9.5}', name="scripted")
    assert critic.score(images, PROMPTS).tolist() == [9.5, 9.5, 9.5] and critic.suggest(images, PROMPTS) == [None] * 3
    assert len(seen) == 3 and f'prompt "{PROMPTS[0]}"' in seen[0]
    with pytest.raises(ValueError, match="`instruction` is 'Rate it.'"):
        C.VLMCritic(reply_fn=str, instruction="Rate it.")
    with pytest.raises(ValueError, match="`fallback_score` is 11"):
        C.VLMCritic(reply_fn=str, fallback_score=11)
    with pytest.raises(ValueError, match="`model` is NoneType"):
        C.VLMCritic()


# ---- ensemble, world CLIP --------------------------------------------------------------------------------------------
class _Fixed(C.LayoutCritic):
    """A critic with fixed scores and suggestions for the images whose prompt it knows."""

    def __init__(self, name, scores, suggests=()):
        self.name, self.scores, self.suggests = name, torch.tensor(scores), set(suggests)

    def score(self, images, prompts):
        return self.scores

    def suggest(self, images, prompts):
        return [C.Suggestion(p, reason=self.name) if p in self.suggests else None for p in prompts]


def test_ensemble_rank_and_zscore_on_a_hand_example():
    prompts, images = ["a", "a", "a", "b"], torch.zeros(4, 3, 8, 8)
    first, second = _Fixed("first", [3.0, 1.0, 2.0, 5.0], {"a"}), _Fixed("second", [1.0, 2.0, 3.0, 0.0], {"a", "b"})
    # ranks within prompt "a": first [1, 0, 0.5], second [0, 0.5, 1]; "b" alone: 0.5; weights 1 and 3
    rank = C.EnsembleCritic([first, second], method="rank", weights=[1, 3])
    torch.testing.assert_close(rank.score(images, prompts), torch.tensor([0.25, 0.375, 0.875, 0.5]))
    # z-scores within "a": first [1, -1, 0] * sqrt(3/2), second [-1, 0, 1] * sqrt(3/2); "b" alone: 0
    z = C.EnsembleCritic([first, second], method="zscore")
    torch.testing.assert_close(z.score(images, prompts), torch.tensor([0.0, -0.5, 0.5, 0.0]) * 1.5**0.5)
    ties = C.group_normalise(np.array([2.0, 2.0, 1.0]), ["a"] * 3, "rank")
    assert ties.tolist() == [0.75, 0.75, 0.0]
    with pytest.raises(ValueError, match="`scores` has shape \\(2,\\) for 3 prompts"):
        C.group_normalise(np.zeros(2), ["a"] * 3, "zscore")
    assert [s.reason for s in rank.suggest(images, prompts)] == ["first", "first", "first", "second"]
    assert rank.name == "ensemble (rank: first, second)" and isinstance(rank, C.Critic)
    with pytest.raises(ValueError, match="`critics` is"):
        C.EnsembleCritic([first])
    with pytest.raises(ValueError, match="`method` is 'mean'"):
        C.EnsembleCritic([first, second], method="mean")
    with pytest.raises(ValueError, match=r"`weights` is \[1, -1\]"):
        C.EnsembleCritic([first, second], weights=[1, -1])
    with pytest.raises(ValueError, match=r"`weights` is \[1\]; pass 2"):
        C.EnsembleCritic([first, second], weights=[1])
    with pytest.raises(ValueError, match="critic 'nan' gave scores"):
        C.EnsembleCritic([first, _Fixed("nan", [float("nan")] * 4)]).score(images, prompts)


def test_world_clip_critic_through_the_plugin_registry():
    from discadapt.worlds.shapes import make_dataset, render
    from discadapt.worlds.shapes.bundle import load_clip
    from discadapt.worlds.shapes.clip import clip_scores

    critic = C.critic_from_name("world CLIP")
    assert critic.name == "world CLIP" and isinstance(critic, C.Critic)
    examples = make_dataset(3, split="test_id", seed=0, categories=["spatial"], image_size=32)
    pixels, captions = np.stack([render(e.scene) for e in examples]), [e.caption.text for e in examples]
    expected = clip_scores(load_clip(), pixels, captions)
    torch.testing.assert_close(critic.score(pixels, captions), expected)
    as_float = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255  # (3, 3, 32, 32) in [0, 1]
    torch.testing.assert_close(critic.score(as_float, captions), expected)
    torch.testing.assert_close(critic.score([Image.fromarray(p) for p in pixels], captions), expected)
    assert [s.regions for s in critic.suggest(pixels, captions)] == [tuple(C.plan_layout(c)) for c in captions]
    with pytest.raises(ValueError, match="`name` is 'oracle', which no plug-in registered"):
        C.critic_from_name("oracle")


def test_locating_critic_scores_relations_by_layout_and_the_rest_by_its_fallback(sd_pipe, images):
    from discadapt.scorers import FunctionScorer
    from discadapt.scoring import layout_score

    fallback = FunctionScorer("brightness", lambda x, prompts: torch.full((len(prompts),), 7.0))
    critic = C.LocatingCritic(sd_pipe, fallback=fallback, num_timesteps=2)
    assert critic.name == "locating denoising / brightness" and isinstance(critic, C.Critic)
    scores = critic.score(images, PROMPTS)
    layouts = [C.plan_layout(p) for p in PROMPTS]
    torch.testing.assert_close(scores[[0, 2]], layout_score(sd_pipe, images, layouts, num_timesteps=2)[[0, 2]])
    assert scores[1] == 7.0  # no relation: the fallback's score
    assert C.LocatingCritic(sd_pipe, num_timesteps=2).score(images, PROMPTS)[1] == 0
    assert critic.suggest(images, PROMPTS)[0].regions == tuple(layouts[0])
    with pytest.raises(ValueError, match="`fallback` is a str"):
        C.LocatingCritic(sd_pipe, fallback="clip")
    with pytest.raises(ValueError, match="`batch_size` is 0"):
        C.LocatingCritic(sd_pipe, batch_size=0)


def test_augment_command_builds_the_locating_critic(sd_pipe):
    from discadapt.interaction.commands import make_critic

    alone = make_critic(sd_pipe, ["locating"])
    assert isinstance(alone, C.LocatingCritic) and alone.fallback is None
    paired = make_critic(sd_pipe, ["denoising", "locating"])
    assert (
        isinstance(paired.fallback, C.DenoisingCritic)
        and paired.name == "locating denoising / relative denoising error"
    )
    with pytest.raises(ValueError, match="locating, or a registered scorer"):
        make_critic(sd_pipe, ["locate"])
