"""Fast tests of the shapes world's pipeline trainer (`discadapt.worlds.shapes.train`) on tiny models and a few
steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from discadapt.testing import assert_same_state
from discadapt.tokenizer import clip_tokenizer
from discadapt.train.runs import RunDir
from discadapt.worlds.shapes.models import (
    CLIP_EOS,
    ModelSizes,
    count_parameters,
    make_text_encoder,
    make_unet,
    make_vae,
)
from discadapt.worlds.shapes.train import (
    WorldTrainConfig,
    evaluate_world,
    export_pipeline,
    reconstruction_accuracy,
    train_world,
)


def load_checkpoint(out):
    return RunDir(out).load_checkpoint()


TINY = dict(
    vae_steps=3,
    unet_steps=3,
    batch_size=2,
    vae_batch_size=2,
    sizes=ModelSizes.tiny(),
    progress=False,
    scale_examples=16,
)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A run of 3 VAE + 3 UNet steps without interruption."""
    out = tmp_path_factory.mktemp("straight")
    return out, train_world(out, **TINY)


def test_models_are_seeded_and_sized():
    sizes = ModelSizes.tiny()
    a, b = make_unet(sizes, seed=3), make_unet(sizes, seed=3)
    assert_same_state(a.state_dict(), b.state_dict())
    assert not torch.equal(next(iter(make_unet(sizes, seed=4).parameters())), next(iter(a.parameters())))
    assert make_vae(sizes).config.block_out_channels == (16, 16, 16)  # downsampling 4: 32 -> 8
    assert make_unet(ModelSizes()).config.sample_size == 8
    text = make_text_encoder(sizes)
    assert (text.config.vocab_size, text.config.max_position_embeddings, text.config.eos_token_id) == (
        49408,
        77,
        CLIP_EOS,
    )
    assert count_parameters(make_unet(ModelSizes())) == 4_222_948
    with pytest.raises(ValueError, match="not multiples of `norm_groups`"):
        ModelSizes(unet_channels=(24, 32))


def test_smoke_writes_a_loadable_pipeline(straight):
    out, result = straight
    assert result["done"] and result["step"] == 6 and result["pipeline"] == str(out / "pipeline")
    assert np.isfinite(result["vae_loss"]) and np.isfinite(result["unet_loss"])
    assert list((out / "pipeline" / "unet").glob("*.safetensors"))
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in logged] == ["vae"] * 3 + ["unet"] * 3

    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.tokenizer("a red circle").input_ids == clip_tokenizer()("a red circle").input_ids
    checkpoint = load_checkpoint(out)
    scale = checkpoint.meta["scaling_factor"]
    assert pipe.vae.config.scaling_factor == pytest.approx(scale) and scale > 0
    # the saved UNet holds the EMA weights, not the raw ones
    for name, p in pipe.unet.named_parameters():
        assert torch.equal(p.data, checkpoint.state[f"ema.{name}"]), name
    assert any(not torch.equal(checkpoint.trainable[f"unet.{n}"], checkpoint.state[f"ema.{n}"]) for n, _ in
               pipe.unet.named_parameters())  # fmt: skip

    image = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()

    scores = evaluate_world(pipe, n_prompts=2, seed=0, steps=2, guidance=4.0, categories=["single", "spatial"])
    assert set(scores) == {"single", "spatial"} and all(0 <= v <= 1 for v in scores.values())
    recon = reconstruction_accuracy(pipe.vae, n=4)
    assert set(recon) == {"kinds", "exact", "caption"} and all(0 <= v <= 1 for v in recon.values())

    again = train_world(out, **TINY)  # finished: nothing more to do, same pipeline
    assert again["step"] == 6 and again["vae_loss"] is None and again["unet_loss"] is None


def test_resume_at_the_phase_switch_reaches_the_same_weights(straight, tmp_path):
    """Stopped at the VAE -> UNet switch (before the latent scale is measured); a crash inside the UNet phase is in
    tests/test_engine.py."""
    stop = 3
    args = {**TINY, "checkpoint_every": 2}  # does not change the weights
    first = train_world(tmp_path, stop_after=stop, **args)
    assert first["step"] == stop and not first["done"] and first["pipeline"] is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == f"step-{stop:08d}"
    with open(tmp_path / "log.jsonl", "a") as log:  # a step logged, then killed before its checkpoint
        log.write(json.dumps({"step": stop + 1, "phase": "unet", "loss": 9.0, "seconds": 0.1}) + "\n")
    second = train_world(tmp_path, **args)
    assert second["done"] and second["step"] == 6
    # the newest KEEP_CHECKPOINTS (2) are kept, no temporary folder is left behind
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    assert_same_state(vars(load_checkpoint(tmp_path)), vars(load_checkpoint(straight[0])))  # models, EMA, optimizer
    assert second["unet_loss"] == straight[1]["unet_loss"]
    logged = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 7))  # each step logged once


def test_a_finished_run_extends_to_the_weights_of_a_longer_run(tmp_path):
    """`unet_steps` may grow on resume (constant learning rate after warmup): 3 + 1 steps equal 4 straight."""
    short = train_world(tmp_path / "a", **TINY)
    assert json.loads((tmp_path / "a" / "pipeline" / "train_step.json").read_text())["unet_steps"] == 3
    longer = train_world(tmp_path / "a", **{**TINY, "unet_steps": 4})
    straight = train_world(tmp_path / "b", **{**TINY, "unet_steps": 4})
    assert short["step"] == 6 and longer["step"] == straight["step"] == 7
    assert_same_state(vars(load_checkpoint(tmp_path / "a")), vars(load_checkpoint(tmp_path / "b")))
    assert json.loads((tmp_path / "a" / "pipeline" / "train_step.json").read_text())["unet_steps"] == 4
    with pytest.raises(ValueError, match=r"`vae_steps \+ unet_steps` is 5, but .* already holds 7 steps"):
        train_world(tmp_path / "a", **{**TINY, "unet_steps": 2})


def test_export_pipeline_of_an_unfinished_run(tmp_path):
    train_world(tmp_path / "run", stop_after=4, **TINY)
    path = export_pipeline(tmp_path / "run", tmp_path / "export")
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    assert json.loads((path / "train_step.json").read_text()) == {"step": 4, "unet_steps": 1}
    assert pipe.vae.config.scaling_factor == load_checkpoint(tmp_path / "run").meta["scaling_factor"]
    train_world(tmp_path / "vae_only", stop_after=2, **TINY)
    with pytest.raises(ValueError, match="still in the VAE phase"):
        export_pipeline(tmp_path / "vae_only", tmp_path / "nothing")


def test_config_mismatch_on_resume_names_the_fields(tmp_path):
    train_world(tmp_path, stop_after=1, **TINY)
    saved = (tmp_path / "train_config.json").read_text()
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"another configuration \(config.seed: saved 0, now 1\)"):
        train_world(tmp_path, **{**TINY, "seed": 1})
    sizes = ModelSizes(vae_channels=(16, 16, 16), text_hidden=32, text_layers=1, text_heads=2, unet_channels=(16, 32))
    with pytest.raises(ValueError, match="config.sizes.text_hidden: saved 64, now 32"):
        train_world(tmp_path, **{**TINY, "sizes": sizes})
    with pytest.raises(ValueError, match="config.batch_size: saved 2, now 3; config.lr: saved 0.0008, now 0.001"):
        train_world(tmp_path, **{**TINY, "batch_size": 3, "lr": 1e-3, "unet_steps": 4})
    assert (tmp_path / "train_config.json").read_text() == saved
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == checkpoints


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(vae_steps=0), "`vae_steps` is 0"),
        (dict(unet_steps=0), "`unet_steps` is 0"),
        (dict(batch_size=0), "`batch_size` is 0"),
        (dict(vae_steps=2.5), "`vae_steps` is 2.5"),
        (dict(seed=-1), "`seed` is -1"),
        (dict(lr=0.0), "`lr` is 0.0"),
        (dict(caption_dropout=1.0), r"`caption_dropout` is 1.0; pass a float in \[0, 1\)"),
        (dict(ema_decay=-0.1), "`ema_decay` is -0.1"),
        (dict(stop_after=0), "`stop_after` is 0"),
        (dict(category_weights={"colours": 1.0}), r"`category_weights` names \['colours'\]"),
        (dict(category_weights={"single": 0.0}), "not all 0"),
        (dict(learning_rate=1e-3), r"unknown options \['learning_rate'\]"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        train_world(tmp_path / "run", **{**TINY, **change})
    assert not (tmp_path / "run").exists()


def test_config_defaults_are_valid_and_evaluate_checks_arguments():
    config = WorldTrainConfig()
    assert config.total_steps == config.vae_steps + config.unet_steps
    assert config.to_dict()["sizes.unet_channels"] == [32, 64, 128]
    with pytest.raises(ValueError, match="`n_prompts` is 0"):
        evaluate_world(None, n_prompts=0)
    with pytest.raises(ValueError, match="`n` is 0"):
        reconstruction_accuracy(None, n=0)


def test_unused_token_rows_keep_their_initial_values(straight):
    """Bundles store only the token-embedding rows the world uses; the others must equal the seeded init."""
    out, _ = straight
    trained = load_checkpoint(out).trainable["text_encoder.embeddings.token_embedding.weight"]
    initial = make_text_encoder(ModelSizes.tiny(), seed=1).get_input_embeddings().weight.detach()
    changed = (trained != initial).any(dim=1).nonzero().flatten()
    assert 0 < len(changed) < 100 and CLIP_EOS in changed.tolist()
    keep = torch.ones(len(initial), dtype=torch.bool)
    keep[changed] = False
    assert torch.equal(trained[keep], initial[keep])
