"""The one training engine: a step loop under accelerate that every trainer plugs into as an `Objective`.

Stage 1 (`probe.ProbeObjective`), stage 2 (`tune.TuneObjective`), the shapes world's pipeline and CLIP trainers are
objectives; the engine does the rest. `run_training(objective, out_dir, ...)`:

1. Checks: `stop_after`, and the run folder (`runs.RunDir.check`: an existing run is resumed only with `resume=True`
   and the same objective, configuration, data and number of processes). Nothing is written or changed before this.
2. Models: `objective.setup(accelerator)` builds (or freezes and casts) its models and returns the module accelerate
   wraps; AdamW over `objective.param_groups(module)` (each group with its own base learning rate, optional weight
   decay and schedule start); module and optimizer go through `accelerator.prepare`.
3. Resume: the newest checkpoint's trained parameters, optimizer state and the objective's own state (EMA weights,
   a latent scale) are loaded, and the loop continues at its step.
4. Each optimizer step s: `objective.before_step(s)`; every group's learning rate set by the one schedule
   (`schedule.lr_factor`); `grad_accum` micro-batches from `objective.micro_batches`, each after re-seeding the
   global RNG from (seed, s, micro-step, process) (dropout), with its loss from `objective.loss` (gradients
   synchronised on the last only); clipping; the optimizer step; `objective.after_step(s)` (EMA, clamps); a progress
   bar; `log.jsonl`; a checkpoint every `checkpoint_every` steps, at `stop_after` and at the end (main process,
   atomically).
5. At the end: `objective.finish(run, step, accelerator)` writes the outputs (atomically) and evaluates.

Because the data of step s are a pure function of s (each objective's `micro_batches`), the learning rate a function
of s and the global RNG re-seeded per micro-step, a resumed run ends with the weights of an uninterrupted one.

Example:
    >>> result = run_training(ProbeObjective(pipe, dataset, ProbeConfig(steps=100)), "runs/probe")
    >>> result["step"], result["done"], result["adapter"]
    (100, True, 'runs/probe/adapter')
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm

from .runs import Checkpoint, RunDir
from .schedule import LR_SCHEDULES, lr_factor

__all__ = ["LoopSettings", "Objective", "make_accelerator", "run_training"]


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How the engine runs an objective; each objective builds these from its own configuration.

    Args:
        steps (int): optimizer steps in all, >= 1.
        seed (int): seed of the per-micro-step global RNG. Default 0.
        grad_accum (int): micro-batches per optimizer step, >= 1. Default 1.
        max_grad_norm (float | None): gradient clipping norm; None does not clip. Default 1.0.
        weight_decay (float): AdamW weight decay of groups that set none. Default 0.0.
        lr_warmup_steps (int): linear warmup of every group's schedule. Default 0.
        lr_schedule (str): one of `schedule.LR_SCHEDULES`. Default "constant".
        checkpoint_every (int): steps between checkpoints (one is also written at a stop and at the end). Default 500.
        keep_checkpoints (int): newest checkpoints kept. Default 2.
        log_every (int): steps between lines of `log.jsonl`. Default 1.
        samples_per_step (int | None): samples of one micro-batch per process, for the progress bar. Default None.
        steps_name (str): the argument that sets `steps`, named in errors. Default "steps".
    """

    steps: int
    seed: int = 0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    lr_warmup_steps: int = 0
    lr_schedule: str = "constant"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 1
    samples_per_step: int | None = None
    steps_name: str = "steps"

    def __post_init__(self):
        for name in ("steps", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; pass an int >= 1.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"`lr_schedule` is {self.lr_schedule!r}; pick one of {', '.join(LR_SCHEDULES)}.")


class Objective:
    """What a trainer plugs into `run_training`: its models, parameter groups, data, loss, hooks and outputs.

    Subclasses set `name` (recorded in the run folder; a folder of another objective is refused), `settings`
    (`LoopSettings`), and implement `record`, `setup`, `param_groups`, `micro_batches` and `finish`; the other hooks
    have defaults.

    Attributes:
        name (str): the objective's name, e.g. "probe".
        settings (LoopSettings): how the engine runs it.
        resumable (tuple[str, ...]): `config` fields of `record()` a resumed run may change.
        outputs (tuple[str, ...]): keys `finish` adds to the result (None until the run is done).
    """

    name: str = "objective"
    settings: LoopSettings
    resumable: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def record(self) -> dict:
        """`{"config": dict, "run": dict}`: what must match for a run folder to be resumed (JSON-ready)."""
        raise NotImplementedError

    def setup(self, accelerator: Accelerator) -> torch.nn.Module:
        """Build, move and freeze the models; return the module accelerate wraps (its trainable parameters, by
        name, are what checkpoints hold)."""
        raise NotImplementedError

    def param_groups(self, module: torch.nn.Module) -> list[dict]:
        """AdamW groups: `params`, `lr` (the base rate), optional `weight_decay`, and optional `schedule_start` /
        `schedule_steps` (the steps of the group's own schedule; by default 0 and `settings.steps`)."""
        raise NotImplementedError

    def micro_batches(self, first: int, count: int, accelerator: Accelerator) -> Iterator:
        """Micro-batches `first, ..., first + count - 1` of this process, in order; micro-batch m belongs to
        optimizer step m // grad_accum. Each must be a pure function of (m, process)."""
        raise NotImplementedError

    def loss(self, model, batch, step: int, accelerator: Accelerator) -> dict[str, torch.Tensor]:
        """The losses of one micro-batch: `loss` (what is minimised) and any parts, scalar tensors."""
        return model(batch)

    def clip_parameters(self, optimizer) -> list[torch.nn.Parameter]:
        """The parameters whose gradient norm is clipped (those without a gradient are skipped)."""
        return [p for group in optimizer.param_groups for p in group["params"]]

    def phase(self, step: int) -> str | None:
        """The name of the phase of `step` (logged, timed separately), or None."""
        return None

    def before_step(self, step: int) -> None:
        """Called before optimizer step `step` (e.g. measure something at a phase change)."""

    def after_step(self, step: int) -> None:
        """Called after optimizer step `step` (e.g. an EMA update, a clamp)."""

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The objective's own state to checkpoint (beyond parameters and optimizer): tensors and JSON values."""
        return {}, {}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what `checkpoint_state` returned."""

    def finish(self, run: RunDir, step: int, accelerator: Accelerator) -> dict:
        """Write the outputs of a finished run (with `run.write_output`) and evaluate; return the `outputs` keys."""
        return {}


def make_accelerator(mixed_precision: str = "no", cpu: bool = False) -> Accelerator:
    """The `Accelerator` the engine builds by default: `mixed_precision`, and DDP told that a batch may leave some
    parameters unused (e.g. adapter heads without a box in the batch)."""
    return Accelerator(
        mixed_precision=mixed_precision,
        cpu=cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


_SCHEDULE_KEYS = ("base_lr", "schedule_start", "schedule_steps")  # what the engine adds to each param group


def _step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return int(np.random.SeedSequence((seed, 4, step, micro, rank)).generate_state(1)[0])


class _Training:
    """The state of one `run_training` call: models, optimizer, run folder and counters."""

    def __init__(self, objective: Objective, run: RunDir, accelerator: Accelerator):
        self.objective, self.run, self.accelerator = objective, run, accelerator
        self.settings = s = objective.settings
        self.module = objective.setup(accelerator)
        groups = objective.param_groups(self.module)
        for group in groups:
            group["base_lr"] = group["lr"]
            group.setdefault("schedule_start", 0)
            group.setdefault("schedule_steps", self.settings.steps - group["schedule_start"])
        optimizer = torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=self.settings.weight_decay)
        self.model, self.optimizer = accelerator.prepare(self.module, optimizer)
        self.trainable = {name: p for name, p in self.module.named_parameters() if p.requires_grad}
        self.main = accelerator.is_main_process
        per_process = None if s.samples_per_step is None else s.samples_per_step * s.grad_accum
        self.samples = None if per_process is None else per_process * accelerator.num_processes  # per optimizer step
        self.seconds: dict[str, list[float]] = {}  # phase -> seconds of its steps in this call
        self.last: dict[str, dict[str, float]] = {}  # phase -> losses of its last step in this call
        self.losses: dict[str, float] = {}  # of the last step of this call

    def resume(self, folder) -> int:
        """Load checkpoint `folder` (or nothing when None); return the step to continue from."""
        if folder is None:
            return 0
        checkpoint = self.run.load_checkpoint(folder, self.accelerator.device)
        if set(checkpoint.trainable) != set(self.trainable):
            different = sorted(set(checkpoint.trainable) ^ set(self.trainable))[:3]
            raise ValueError(
                f"checkpoint {str(folder)!r} holds other parameters than this run trains (e.g. {different}); it "
                "belongs to another configuration."
            )
        with torch.no_grad():
            for name, param in self.trainable.items():
                param.copy_(checkpoint.trainable[name])
        schedules = [{k: g[k] for k in _SCHEDULE_KEYS} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(checkpoint.optimizer)
        for group, schedule in zip(self.optimizer.param_groups, schedules):  # this run's, not the checkpoint's
            group.update(schedule)
        self.objective.load_checkpoint_state(checkpoint.state, checkpoint.meta)
        return checkpoint.step

    def set_learning_rates(self, step: int) -> float:
        """Set each group's rate for `step`; return the rate of the first group whose schedule covers it."""
        s, shown = self.settings, None
        for group in self.optimizer.param_groups:
            local = step - group["schedule_start"]  # a group before its schedule starts does not train yet
            factor = lr_factor(local, s.lr_warmup_steps, group["schedule_steps"], s.lr_schedule) if local >= 0 else 0.0
            group["lr"] = group["base_lr"] * factor
            if shown is None and 0 <= local < group["schedule_steps"]:
                shown = group["lr"]
        return self.optimizer.param_groups[0]["lr"] if shown is None else shown

    def step(self, step: int, batches: Iterator) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; return the mean losses."""
        s, accelerator = self.settings, self.accelerator
        sums: dict[str, float] = {}
        for micro in range(s.grad_accum):
            batch = next(batches)
            torch.manual_seed(_step_seed(s.seed, step, micro, accelerator.process_index))  # dropout
            sync = micro == s.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(self.model):
                losses = self.objective.loss(self.model, batch, step, accelerator)
                accelerator.backward(losses["loss"] / s.grad_accum if s.grad_accum > 1 else losses["loss"])
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / s.grad_accum
        if s.max_grad_norm is not None:
            accelerator.clip_grad_norm_(self.objective.clip_parameters(self.optimizer), s.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def checkpoint(self, step: int) -> None:
        if self.main:
            tensors, meta = self.objective.checkpoint_state()
            checkpoint = Checkpoint(step, dict(self.trainable), self.optimizer.state_dict(), tensors, meta)
            self.run.save_checkpoint(checkpoint, self.settings.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def report(self, bar, log, done: int, end: int, losses: dict, lr: float, seconds: float, phase) -> None:
        """Progress bar, and a `log.jsonl` line every `log_every` steps and at the last (main process)."""
        bar.update(1)
        postfix = {"loss": f"{losses['loss']:.4f}", **({"phase": phase} if phase else {})}
        if self.samples:
            postfix["samples_per_s"] = f"{self.samples / seconds:.1f}"
        bar.set_postfix(postfix)
        if done % self.settings.log_every == 0 or done == end:
            entry = {"step": done, **({"phase": phase} if phase else {}), **losses, "lr": lr, "seconds": seconds}
            log.write(json.dumps(entry) + "\n")
            log.flush()

    def loop(self, start: int, end: int, progress: bool) -> int:
        """Optimizer steps `start..end - 1` (see the module docstring, step 4); return the step reached."""
        s, objective = self.settings, self.objective
        batches = iter(
            objective.micro_batches(start * s.grad_accum, max(end - start, 0) * s.grad_accum, self.accelerator)
        )
        show = progress and self.main
        bar = tqdm(total=s.steps, initial=start, disable=not show, desc=f"discadapt {objective.name}")
        log = open(self.run.log_path, "a", encoding="utf-8") if self.main else contextlib.nullcontext()
        with log:
            for step in range(start, end):
                began = time.perf_counter()
                objective.before_step(step)
                lr = self.set_learning_rates(step)
                losses = self.step(step, batches)
                objective.after_step(step)
                seconds = time.perf_counter() - began
                phase = objective.phase(step)
                self.seconds.setdefault(phase or objective.name, []).append(seconds)
                self.last[phase or objective.name] = self.losses = losses
                if self.main:
                    self.report(bar, log, step + 1, end, losses, lr, seconds, phase)
                if (step + 1) % s.checkpoint_every == 0 or step + 1 == end:
                    self.checkpoint(step + 1)
        bar.close()
        return max(start, end)

    def result(self, step: int) -> dict:
        every = [t for times in self.seconds.values() for t in times]
        per_step = float(np.mean(every)) if every else None
        return {
            "objective": self.objective.name,
            "step": step,
            "done": step >= self.settings.steps,
            "out_dir": str(self.run.path),
            "losses": self.losses,
            "seconds_per_step": per_step,
            "samples_per_second": self.samples / per_step if self.samples and per_step else None,
            "phases": {
                name: {"steps": len(times), "seconds": float(sum(times)), "losses": self.last[name]}
                for name, times in self.seconds.items()
            },
            **{name: None for name in self.objective.outputs},
        }


def run_training(
    objective: Objective,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> dict:
    """Train (or resume) `objective` in the run folder `out_dir` (see the module docstring).

    Args:
        objective (Objective): what to train.
        out_dir (str | PathLike): the run folder (layout in `discadapt.train.runs`).
        resume (bool): continue the run in `out_dir` from its newest checkpoint; an existing run is never
            overwritten without it. Default False.
        stop_after (int | None): stop after this optimizer step (with a checkpoint), to run in slices. Default None.
        progress (bool): show a progress bar. Default True.
        accelerator (Accelerator | None): one built by the caller; by default `make_accelerator()`.

    Returns:
        dict: `objective`, `step`, `done`, `out_dir`, `losses` (of the last step of this call), `seconds_per_step`
        and `samples_per_second` (this call), `phases` (per phase: steps, seconds and last losses of this call), and
        the objective's `outputs` (None until the run is done).

    Raises:
        ValueError: a bad `stop_after`, or a run folder that may not receive this run (nothing is written then).
    """
    # 1. checks, before anything is written
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise ValueError(f"`stop_after` is {stop_after!r}; pass an int >= 1 (a step to stop at), or None.")
    settings = objective.settings
    accelerator = make_accelerator() if accelerator is None else accelerator
    record = {"objective": objective.name, **objective.record()}
    record["run"] = {**record.get("run", {}), "num_processes": accelerator.num_processes}
    run = RunDir(out_dir)
    folder = run.check(record, resume, settings.steps, objective.resumable, settings.steps_name)
    # 2. models and optimizer; 3. resume
    training = _Training(objective, run, accelerator)
    start = training.resume(folder)
    if accelerator.is_main_process:
        run.start(record, start)
    accelerator.wait_for_everyone()
    # 4. the loop
    end = settings.steps if stop_after is None else min(stop_after, settings.steps)
    step = training.loop(start, end, progress)
    result = training.result(step)
    # 5. outputs
    if result["done"]:
        result.update(objective.finish(run, step, accelerator))
    return result
