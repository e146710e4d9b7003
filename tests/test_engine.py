"""The training engine (`discadapt.train.engine`) and run folder (`discadapt.train.runs`): on a toy objective
(resume after a stop and after a crash, the one learning-rate schedule, per-group schedule starts, gradient
accumulation, log trimming, refusals before anything is written), and resumption of every trainer that plugs into
it: the world's pipeline and CLIP trainers after a crash mid-step here; stage 1 and stage 2 after a stop and after a
crash in tests/test_train.py (`test_probe_resume_...`, `test_tune_resume_...`, which also run with DataLoader
workers and gradient accumulation); the world trainers after a stop in tests/test_world_train.py and
tests/test_world_clip.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from discadapt.testing import assert_same_state
from discadapt.train.engine import LoopSettings, Objective, run_training
from discadapt.train.runs import RunDir
from discadapt.train.schedule import lr_factor


class Toy(Objective):
    """A two-layer regression with dropout (the global RNG), two parameter groups (the second starts its schedule at
    step 2, at half the rate) and its own state (an EMA of the first layer's weight)."""

    name = "toy"
    outputs = ("weights",)
    resumable = ("checkpoint_every", "steps")

    def __init__(self, steps=6, lr=0.1, grad_accum=1, schedule="cosine", warmup=2, checkpoint_every=2, batch=4):
        self.config = {"steps": steps, "lr": lr, "checkpoint_every": checkpoint_every, "batch": batch}
        self.settings = LoopSettings(
            steps=steps,
            grad_accum=grad_accum,
            weight_decay=0.01,
            lr_warmup_steps=warmup,
            lr_schedule=schedule,
            checkpoint_every=checkpoint_every,
            samples_per_step=batch,
        )

    def record(self) -> dict:
        return {"config": dict(self.config), "run": {}}

    def setup(self, accelerator):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
        self.ema = self.model[0].weight.detach().clone()
        return self.model

    def param_groups(self, model):
        lr = self.config["lr"]
        return [
            {"params": list(model[0].parameters()), "lr": lr},
            {"params": list(model[2].parameters()), "lr": lr / 2, "schedule_start": 2},
        ]

    def micro_batches(self, first, count, accelerator):
        for m in range(first, first + count):
            x = torch.randn(self.config["batch"], 3, generator=torch.Generator().manual_seed(m))
            yield x, x.sum(1, keepdim=True)

    def loss(self, model, batch, step, accelerator):
        x, y = batch
        prediction = model(x)
        return {"loss": F.mse_loss(prediction, y), "mean": prediction.mean().detach()}

    def after_step(self, step):
        self.ema = 0.5 * self.ema + 0.5 * self.model[0].weight.detach()

    def checkpoint_state(self):
        return {"ema": self.ema}, {"note": "toy"}

    def load_checkpoint_state(self, tensors, meta):
        assert meta == {"note": "toy"}
        self.ema = tensors["ema"].clone()

    def finish(self, run, step, accelerator):
        path = run.write_output("weights", lambda f: torch.save(self.model.state_dict(), f / "w.pt"), {"step": step})
        return {"weights": str(path)}


def _crash_at(monkeypatch, cls, calls: int):
    """Make `cls.loss` raise on its `calls`-th call: a crash mid-step, after earlier checkpoints."""
    loss, count = cls.loss, [0]

    def crashing(self, *args, **kwargs):
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt("killed")
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(cls, "loss", crashing)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def _folder_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    objective = Toy()
    return out, run_training(objective, out, progress=False), objective


@pytest.mark.parametrize("how", ["stop_after", "crash"])
def test_resume_reaches_the_state_of_an_uninterrupted_run_and_trims_the_log(straight, tmp_path, monkeypatch, how):
    if how == "stop_after":
        first = run_training(Toy(), tmp_path, stop_after=3, progress=False)
        assert first["step"] == 3 and not first["done"] and first["weights"] is None
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    else:
        _crash_at(monkeypatch, Toy, calls=4)  # in step 4: checkpoint 2 survives, steps 1-3 are logged
        with pytest.raises(KeyboardInterrupt):
            run_training(Toy(), tmp_path, progress=False)
        monkeypatch.undo()
        assert [e["step"] for e in _log(tmp_path)] == [1, 2, 3]
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002"]
    objective = Toy()
    resumed = run_training(objective, tmp_path, resume=True, progress=False)
    assert resumed["done"] and resumed["step"] == 6
    out, result, reference = straight
    assert_same_state(objective.model.state_dict(), reference.model.state_dict())
    assert torch.equal(objective.ema, reference.ema)  # the objective's own state went through the checkpoint
    assert_same_state(vars(RunDir(tmp_path).load_checkpoint()), vars(RunDir(out).load_checkpoint()))
    logged, expected = _log(tmp_path), _log(out)
    assert [e["step"] for e in logged] == [1, 2, 3, 4, 5, 6]  # steps taken again are logged once
    assert [(e["loss"], e["lr"]) for e in logged] == [(e["loss"], e["lr"]) for e in expected]
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    # name: (how the newest checkpoint (step 4) or the log is damaged, the warning it gives)
    "truncated trainable.safetensors": (
        lambda run, newest: _truncate(newest / "trainable.safetensors"),
        r"step-00000004' is damaged \(trainable.safetensors has \d+ bytes, manifest.json records \d+\)",
    ),
    "truncated optimizer.pt": (
        lambda run, newest: _truncate(newest / "optimizer.pt"),
        r"step-00000004' is damaged \(optimizer.pt has \d+ bytes",
    ),
    "broken state.json": (
        lambda run, newest: (newest / "state.json").write_text('{"step": 4, "me', encoding="utf-8"),
        r"step-00000004' is damaged \(state.json has 15 bytes",
    ),
    "bit flip in state.json": (
        lambda run, newest: (newest / "state.json").write_text(
            (newest / "state.json").read_text().replace("4", "5"), encoding="utf-8"
        ),
        r"step-00000004' is damaged \(state.json does not match the sha256 manifest.json records\)",
    ),
    "no manifest, truncated optimizer.pt": (  # a checkpoint written before manifests: read back to be trusted
        lambda run, newest: ((newest / "manifest.json").unlink(), _truncate(newest / "optimizer.pt")),
        r"step-00000004' is damaged \(optimizer.pt: RuntimeError: .*\); resuming from the checkpoint before it",
    ),
    "torn log line": (
        lambda run, newest: open(run / "log.jsonl", "a").write('{"step": 5, "loss": 0.1'),
        r"log.jsonl' had 1 unreadable line\(s\) \(cut off when a run was killed\?\); dropped them",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_survives_a_damaged_checkpoint_or_log(straight, tmp_path, damage):
    """A damaged newest checkpoint falls back to the one before it with a warning naming it (a torn log line is
    dropped); the resumed run ends with the weights of an uninterrupted one."""
    first = run_training(Toy(), tmp_path, stop_after=4, progress=False)
    assert first["step"] == 4
    run = RunDir(tmp_path)
    assert [p.name for p in run.checkpoints()] == ["step-00000002", "step-00000004"]
    assert json.loads((run.latest() / "manifest.json").read_text())["files"].keys() == {
        "trainable.safetensors", "optimizer.pt", "state.safetensors", "state.json"
    }  # fmt: skip
    assert run.damage(run.latest()) is None
    how, warning = DAMAGE[damage]
    how(tmp_path, run.latest())
    objective = Toy()
    with pytest.warns(UserWarning, match=warning):
        resumed = run_training(objective, tmp_path, resume=True, progress=False)
    assert resumed["done"] and resumed["step"] == 6
    out, _, reference = straight
    assert_same_state(objective.model.state_dict(), reference.model.state_dict())  # torch.equal, tensor by tensor
    assert torch.equal(objective.ema, reference.ema)
    assert_same_state(vars(run.load_checkpoint()), vars(RunDir(out).load_checkpoint()))
    assert [e["step"] for e in _log(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert all(run.damage(folder) is None for folder in run.checkpoints())


def test_damaged_checkpoints_and_records_are_named(tmp_path):
    run_training(Toy(), tmp_path, stop_after=2, progress=False)
    run = RunDir(tmp_path)
    _truncate(run.latest() / "trainable.safetensors")
    with pytest.raises(ValueError, match=r"checkpoint '.*step-00000002' cannot be read: trainable.safetensors: "):
        run.load_checkpoint(run.latest())
    with pytest.warns(UserWarning, match="is damaged"), pytest.raises(FileNotFoundError, match="no valid checkpoint"):
        run.load_checkpoint()
    with pytest.warns(UserWarning, match=r"step-00000002' is damaged"):  # no valid checkpoint: from step 0
        assert run_training(Toy(), tmp_path, resume=True, progress=False)["step"] == 6
    (tmp_path / "train_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train_config.json' is not valid JSON .*; this run folder is damaged"):
        run_training(Toy(), tmp_path, resume=True, progress=False)


def test_one_schedule_per_group_checked_against_the_formula(straight):
    out, result, _ = straight
    total, warmup, lr = 6, 2, 0.1

    def direct(s):  # the module docstring of discadapt.train.schedule, written out
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min((s - warmup) / (total - warmup), 1)))

    assert [e["lr"] for e in _log(out)] == pytest.approx([lr * direct(s) for s in range(total)], rel=1e-12)
    for kind, expect in (("constant", lambda p: 1.0), ("linear", lambda p: 1 - p)):
        got = [lr_factor(s, warmup, total, kind) for s in range(total + 2)]
        want = [(s + 1) / warmup if s < warmup else expect(min((s - warmup) / (total - warmup), 1)) for s in range(8)]
        assert got == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="`kind` is 'step'; pick one of constant, linear, cosine"):
        lr_factor(3, 0, 10, "step")


def test_a_group_does_not_move_before_its_schedule_starts(tmp_path):
    objective = Toy()
    run_training(objective, tmp_path, stop_after=2, progress=False)
    torch.manual_seed(0)
    initial = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    assert torch.equal(objective.model[2].weight, initial[2].weight)  # rate 0 before step 2, no decay either
    assert not torch.equal(objective.model[0].weight, initial[0].weight)


def test_gradient_accumulation_averages_the_micro_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)  # the same function on every micro-batch
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
    y = x.sum(1, keepdim=True)
    one = Toy(steps=1, warmup=0, schedule="constant", batch=4)
    one.micro_batches = lambda first, count, accelerator: iter([(x, y)])
    two = Toy(steps=1, warmup=0, schedule="constant", batch=2, grad_accum=2)
    two.micro_batches = lambda first, count, accelerator: iter([(x[:2], y[:2]), (x[2:], y[2:])])
    run_training(one, tmp_path / "one", progress=False)
    run_training(two, tmp_path / "two", progress=False)
    assert _log(tmp_path / "one")[0]["loss"] == pytest.approx(_log(tmp_path / "two")[0]["loss"], rel=1e-6)
    for a, b in zip(one.model.parameters(), two.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_run_folder_refuses_another_run_before_anything_is_written(straight, tmp_path):
    run_training(Toy(), tmp_path, stop_after=2, progress=False)
    before = _folder_bytes(tmp_path)
    with pytest.raises(ValueError, match=r"already holds a training run at step 2; pass resume=True"):
        run_training(Toy(), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"another configuration \(config.lr: saved 0.1, now 0.2\).*Nothing was"):
        run_training(Toy(lr=0.2), tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"`steps` is 1, but '.*' already holds 2 steps; pass at least that many"):
        run_training(Toy(steps=1), tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"`stop_after` is 0; pass an int >= 1"):
        run_training(Toy(), tmp_path, resume=True, stop_after=0, progress=False)
    other = Toy()
    other.name = "other"
    with pytest.raises(ValueError, match=r"objective: saved 'toy', now 'other'"):
        run_training(other, tmp_path, resume=True, progress=False)
    assert _folder_bytes(tmp_path) == before
    longer = run_training(Toy(checkpoint_every=3), tmp_path, resume=True, progress=False)  # a resumable field
    assert longer["done"] and Path(longer["weights"], "train_step.json").is_file()
    with pytest.raises(ValueError, match=r"`checkpoint_every` is 0; pass an int >= 1"):
        LoopSettings(steps=1, checkpoint_every=0)
    with pytest.raises(ValueError, match=r"`lr_schedule` is 'step'; pick one of constant, linear, cosine"):
        LoopSettings(steps=1, lr_schedule="step")


# ---- the world's trainers, killed mid-step --------------------------------------------------------------------


def test_world_clip_resumes_after_a_crash(tmp_path, monkeypatch):
    from discadapt.worlds.shapes.clip import WorldClipSizes
    from discadapt.worlds.shapes.clip.train import WorldClipObjective, train_world_clip

    args = dict(steps=3, batch_size=3, sizes=WorldClipSizes.tiny(), progress=False, warmup_steps=1)
    straight = train_world_clip(tmp_path / "straight", **args)
    _crash_at(monkeypatch, WorldClipObjective, calls=3)  # in step 3: checkpoint 2 survives
    with pytest.raises(KeyboardInterrupt):
        train_world_clip(tmp_path / "cut", checkpoint_every=1, **args)
    monkeypatch.undo()
    resumed = train_world_clip(tmp_path / "cut", checkpoint_every=1, **args)
    assert resumed["done"] and resumed["loss"] == straight["loss"]
    a, b = RunDir(tmp_path / "straight").load_checkpoint(), RunDir(tmp_path / "cut").load_checkpoint()
    assert_same_state(vars(a), vars(b))


def test_world_pipeline_resumes_after_a_crash_in_the_unet_phase(tmp_path, monkeypatch):
    from discadapt.worlds.shapes.models import ModelSizes
    from discadapt.worlds.shapes.train import WorldPipelineObjective, train_world

    args = dict(vae_steps=1, unet_steps=2, batch_size=2, vae_batch_size=2, sizes=ModelSizes.tiny(), progress=False)
    args.update(scale_examples=8)
    straight = train_world(tmp_path / "straight", **args)
    _crash_at(monkeypatch, WorldPipelineObjective, calls=3)  # in the second UNet step: EMA and scale checkpointed
    with pytest.raises(KeyboardInterrupt):
        train_world(tmp_path / "cut", checkpoint_every=2, **args)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-00000002"]
    resumed = train_world(tmp_path / "cut", **args)  # `checkpoint_every` may change on resume
    assert resumed["done"] and resumed["unet_loss"] == straight["unet_loss"] and resumed["vae_loss"] is None
    a, b = RunDir(tmp_path / "straight").load_checkpoint(), RunDir(tmp_path / "cut").load_checkpoint()
    assert_same_state(vars(a), vars(b))  # models, EMA, latent scale, optimizer
