"""The synthesis-understanding loop (ArtAug, Duan et al. 2024) on any diffusers UNet pipeline, resumable.

`augment(pipe, critic, prompts, out_dir, config)` runs up to `config.rounds` rounds. The training prompts are split
once (seeded) into the prompts the loop learns from and `config.holdout` of them held aside for its stop test. Each
round r, on the model with rounds 1..r-1 fused:

1. Candidates: `candidates` images per prompt (image k drawn with `image_seed(seed, prompt, r * ROUND + k)`), each
   scored by the critic (`score(images, prompts) -> (N,)`).
2. Suggestions: where the critic can suggest (`critic.suggest(images, prompts)`, a refined prompt and regions) and
   `regenerate > 0`, its suggestion for each prompt's best candidate is drawn `regenerate` times with region-aware
   blending (`sampling.regions`), and scored by the same critic.
3. Selection: per prompt, the `top_k` best candidates that beat the prompt's mean score by `min_margin`
   (`dataset.select`), written to `kept.jsonl`.
4. Enhancement: a LoRA trained on (original prompt, kept image) with the denoising loss, or with Diffusion-DPO
   against the prompt's worst candidate (`enhance.objective="dpo"`) (`enhance.py`).
5. Stop test: the LoRA is loaded (not yet fused); `holdout_images` images per held-aside prompt are drawn with the
   same seeds by the previous model and by this one, and the critic scores both sets in one call. The round's gain is
   the paired win rate of the new images minus 1/2 (ties count half), so it means the same for any critic's scale.
6. A round whose gain is at least `min_gain` is fused into the UNet's weights and the loop goes on; otherwise its
   LoRA is dropped and the loop stops. `done.json` is written last.

Everything a round makes is kept in `out_dir/round-NN/` (`dataset.RoundData`); the held-aside images of each model
in `out_dir/holdout/model-NN/`. Run it again with the same arguments after an interruption: finished images, scores
and checkpoints are reused, and the result is that of an uninterrupted run. `rounds` may be raised to continue.

Example:
    >>> result = augment(pipe, critic, prompts, "runs/augment", AugmentConfig(rounds=3, candidates=8))
    >>> result["loras"]  # the accepted rounds' LoRAs, in order; `fuse_enhancements(fresh_pipe, result["loras"])`
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import write_atomic
from ..sampling.seeds import image_generators, image_seed
from .dataset import Candidate, RoundData, image_name, rejected_for, select
from .enhance import EnhanceConfig, fuse_enhancements, load_enhancement, train_enhancement

__all__ = ["AugmentConfig", "augment"]

ROUND = 100_000  # seed index offset of a round: image k of round r is image r * ROUND + k of its prompt
SUGGESTED = 50_000  # offset of regenerated images within a round
HOLDOUT = 10_000_000  # offset of the held-aside images (the same for every model)


def _int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` is {value!r}; pass an int >= {minimum}.")


@dataclasses.dataclass
class AugmentConfig:
    """Settings of the loop (see the module docstring).

    Args:
        rounds (int): rounds at most. Default 3.
        candidates (int): images drawn per prompt and round. Default 8.
        regenerate (int): images regenerated per prompt from the critic's suggestion (0: none). Default 0.
        top_k (int): pairs kept per prompt. Default 1.
        min_margin (float): a kept image beats its prompt's mean score by at least this, in the critic's units.
            Default 0.0.
        holdout (float): fraction of the prompts held aside for the stop test, in [0, 1). Default 0.2.
        holdout_images (int): images per held-aside prompt and model. Default 4.
        min_gain (float): the loop stops after a round whose gain (win rate - 1/2) is below this. Default 0.0.
        steps (int): sampler steps. Default 25.
        guidance (float): classifier-free guidance scale. Default 4.0.
        batch_size (int): images per pipeline call. Default 32.
        seed (int): seed of the prompt split and of every image. Default 0.
        enhance (EnhanceConfig): the LoRA of each round (its seed is offset by the round).
    """

    rounds: int = 3
    candidates: int = 8
    regenerate: int = 0
    top_k: int = 1
    min_margin: float = 0.0
    holdout: float = 0.2
    holdout_images: int = 4
    min_gain: float = 0.0
    steps: int = 25
    guidance: float = 4.0
    batch_size: int = 32
    seed: int = 0
    enhance: EnhanceConfig = dataclasses.field(default_factory=EnhanceConfig)

    def __post_init__(self):
        for name, minimum in [
            ("rounds", 1),
            ("candidates", 1),
            ("regenerate", 0),
            ("top_k", 1),
            ("holdout_images", 1),
            ("steps", 1),
            ("batch_size", 1),
            ("seed", 0),
        ]:
            _int(name, getattr(self, name), minimum)
        if self.top_k > self.candidates + self.regenerate:
            raise ValueError(
                f"`top_k` is {self.top_k} but a prompt has only {self.candidates + self.regenerate} candidates "
                "(`candidates` + `regenerate`); lower `top_k` or draw more."
            )
        for name in ("min_margin", "min_gain", "guidance", "holdout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"`{name}` is {value!r}; pass a finite number.")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"`holdout` is {self.holdout!r}; pass a fraction in [0, 1) (0.2 holds a fifth aside).")
        if self.guidance < 0:
            raise ValueError(f"`guidance` is {self.guidance!r}; pass a scale >= 0 (4 to 7.5 is usual).")
        if isinstance(self.enhance, dict):
            self.enhance = EnhanceConfig(**self.enhance)
        if not isinstance(self.enhance, EnhanceConfig):
            raise ValueError(f"`enhance` is a {type(self.enhance).__name__}; pass an EnhanceConfig.")


def split_prompts(prompts: Sequence[str], holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """The distinct prompts, split (seeded) into those the loop learns from and those held aside."""
    unique = sorted(set(prompts))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_hold = int(round(holdout * len(unique)))
    if holdout and not 0 < n_hold < len(unique):
        raise ValueError(
            f"{len(unique)} distinct prompts cannot be split with `holdout`={holdout}; pass more prompts or "
            "holdout=0 (no stop test)."
        )
    hold = sorted(unique[i] for i in order[:n_hold])
    return [p for p in unique if p not in set(hold)], hold


class _Loop:
    """One call of `augment`: the pipeline, the critic, the prompts and the run folder."""

    def __init__(self, pipe, critic, prompts: Sequence[str], out: Path, config: AugmentConfig, progress: bool):
        self.pipe, self.critic, self.out, self.config, self.progress = pipe, critic, out, config, progress
        self.train, self.held = split_prompts(prompts, config.holdout, config.seed)

    # ---- generation ------------------------------------------------------------------------------------------------
    def draw(self, prompts: list[str], seeds: list[int], regions=None) -> list:
        """PIL images of `prompts`, image i from the noise of `seeds[i]`, optionally with region prompts."""
        kwargs = dict(num_inference_steps=self.config.steps, guidance_scale=self.config.guidance)
        generators = image_generators(seeds)
        if regions is None:
            return self.pipe(prompt=prompts, generator=generators, **kwargs).images
        from ..sampling.regions import generate_with_regions

        return generate_with_regions(self.pipe, prompts, regions, generator=generators, **kwargs).images

    def fill(self, data: RoundData, todo: list[tuple[Candidate, str, list | None]], desc: str) -> None:
        """Draw and score the candidates `todo` (candidate, prompt to draw, regions) in batches, saving each batch."""
        size = self.config.batch_size
        for start in tqdm(range(0, len(todo), size), desc=desc, unit="batch", disable=not self.progress):
            batch = todo[start : start + size]
            regions = [r for _, _, r in batch] if any(r for _, _, r in batch) else None
            images = self.draw([p for _, p, _ in batch], [c.seed for c, _, _ in batch], regions)
            scores = self.critic.score(images, [c.prompt for c, _, _ in batch])
            scored = [dataclasses.replace(c, score=float(s)) for (c, _, _), s in zip(batch, scores.tolist())]
            data.add(scored, images)

    # ---- one round -------------------------------------------------------------------------------------------------
    def candidates(self, data: RoundData, r: int) -> None:
        """Step 1: sampled candidates of every training prompt."""
        done = {c.key for c in data.candidates()}
        todo = []
        for i, prompt in enumerate(self.train):
            for k in range(self.config.candidates):
                if (i, "sample", k) not in done:
                    seed = image_seed(self.config.seed, prompt, r * ROUND + k)
                    todo.append(
                        (Candidate(i, prompt, "sample", k, seed, image_name(i, "sample", k), 0.0), prompt, None)
                    )
        self.fill(data, todo, f"round {r}: candidates")

    def suggestions(self, data: RoundData, r: int) -> None:
        """Step 2: regenerate each prompt's best candidate from the critic's suggestion."""
        if not self.config.regenerate or not callable(getattr(self.critic, "suggest", None)):
            return
        from PIL import Image

        have = data.candidates()
        done = {c.key for c in have}
        best = {
            c.prompt_index: c for c in select([c for c in have if c.source == "sample"], top_k=1, min_margin=-np.inf)
        }
        need = [i for i in sorted(best) if any((i, "suggestion", k) not in done for k in range(self.config.regenerate))]
        todo = []
        for start in range(0, len(need), self.config.batch_size):
            chunk = [best[i] for i in need[start : start + self.config.batch_size]]
            images = [Image.open(data.folder / c.file).convert("RGB") for c in chunk]
            for c, suggestion in zip(chunk, self.critic.suggest(images, [c.prompt for c in chunk])):
                if suggestion is None:
                    continue
                for k in range(self.config.regenerate):
                    if (c.prompt_index, "suggestion", k) in done:
                        continue
                    seed = image_seed(self.config.seed, c.prompt, r * ROUND + SUGGESTED + k)
                    new = Candidate(
                        c.prompt_index,
                        c.prompt,
                        "suggestion",
                        k,
                        seed,
                        image_name(c.prompt_index, "suggestion", k),
                        0.0,
                        suggestion.to_dict(),
                    )
                    todo.append((new, suggestion.prompt, list(suggestion.regions)))
        self.fill(data, todo, f"round {r}: regenerated")

    def holdout_images(self, model: int) -> list[Candidate]:
        """Step 5: the held-aside images of model `model` (0: the pipeline as given), drawn if missing."""
        data = RoundData(self.out / "holdout" / f"model-{model:02d}")
        done = {c.key for c in data.candidates()}
        todo = []
        for i, prompt in enumerate(self.held):
            for k in range(self.config.holdout_images):
                if (i, "sample", k) not in done:
                    seed = image_seed(self.config.seed, prompt, HOLDOUT + k)
                    todo.append(
                        (Candidate(i, prompt, "sample", k, seed, image_name(i, "sample", k), 0.0), prompt, None)
                    )
        self.fill(data, todo, f"held-aside prompts, model {model}")
        return sorted(data.candidates(), key=lambda c: c.key)

    def gain(self, r: int) -> dict:
        """Step 5: paired win rate of model r's held-aside images over model r-1's, scored in one critic call."""
        from PIL import Image

        before, after = self.holdout_images(r - 1), self.holdout_images(r)
        folder = lambda m: self.out / "holdout" / f"model-{m:02d}"  # noqa: E731
        images = [Image.open(folder(r - 1) / c.file).convert("RGB") for c in before]
        images += [Image.open(folder(r) / c.file).convert("RGB") for c in after]
        scores = torch.cat(
            [
                self.critic.score(
                    images[i : i + self.config.batch_size],
                    [c.prompt for c in (before + after)][i : i + self.config.batch_size],
                )
                for i in range(0, len(images), self.config.batch_size)
            ]
        ).float()  # (2M,)
        old, new = scores[: len(before)], scores[len(before) :]
        wins = ((new > old).float() + 0.5 * (new == old).float()).mean().item()
        return {
            "win_rate": wins,
            "gain": wins - 0.5,
            "mean_before": old.mean().item(),
            "mean_after": new.mean().item(),
            "pairs": len(before),
        }

    def round(self, r: int, accepted: list[str]) -> dict:
        """Rounds steps 1-6 for round r on the model with `accepted` LoRAs fused; returns its `done.json`."""
        data = RoundData(self.out / f"round-{r:02d}")
        # 1. candidates; 2. suggestions
        self.candidates(data, r)
        self.suggestions(data, r)
        # 3. selection
        kept = data.kept()
        if kept is None:
            kept = select(data.candidates(), self.config.top_k, self.config.min_margin)
            data.write_kept(kept)
        if not kept:
            info = {"round": r, "kept": 0, "gain": None, "accepted": False, "stop": "no candidate beat its margin"}
            data.write_json("done.json", info)
            return info
        # 4. enhancement LoRA
        from PIL import Image

        def load(chosen):
            return [Image.open(data.folder / c.file).convert("RGB") for c in chosen]

        config = dataclasses.replace(self.config.enhance, seed=self.config.enhance.seed + r)
        dpo = config.objective == "dpo"  # each kept image against its prompt's worst candidate
        result = train_enhancement(
            self.pipe,
            load(kept),
            [c.prompt for c in kept],
            data.folder / "enhance",
            config,
            rejected=load(rejected_for(data.candidates(), kept)) if dpo else None,
            progress=self.progress,
        )
        self.pipe.unload_lora_weights()  # the trained layers; the saved LoRA is loaded back below, as on resume
        self.pipe.unet.eval()
        lora = result["lora"]
        # 5. stop test on the held-aside prompts, with the LoRA loaded but not fused
        test = None
        if self.held:
            self.holdout_images(r - 1)  # the previous model's images, drawn before the LoRA is loaded
            load_enhancement(self.pipe, lora, "candidate")
            test = self.gain(r)
            self.pipe.unload_lora_weights()
        # 6. fuse or stop
        ok = test is None or test["gain"] >= self.config.min_gain
        info = {
            "round": r,
            "kept": len(kept),
            "mean_margin": float(np.mean([c.margin for c in kept])),
            "candidates": len(data.candidates()),
            "lora": str(lora),
            "accepted": ok,
            **(test or {}),
            "stop": None if ok else f"gain below min_gain={self.config.min_gain}",
        }
        data.write_json("done.json", info)
        return info


def _record(loop: _Loop, critic, config: AugmentConfig) -> dict:
    digest = hashlib.sha256("\n".join(loop.train + ["--"] + loop.held).encode("utf-8")).hexdigest()
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "rounds"}
    return {"critic": getattr(critic, "name", type(critic).__name__), "prompts": digest, "config": settings}


def augment(
    pipe,
    critic,
    prompts: Sequence[str],
    out_dir: str | os.PathLike,
    config: AugmentConfig | None = None,
    *,
    progress: bool = True,
) -> dict:
    """Run (or resume) the interaction loop (see the module docstring).

    Args:
        pipe: a diffusers pipeline (SD 1.x/2.x, SDXL). On return its UNet carries the accepted rounds fused.
        critic: a `scorers.Scorer` (`score(images, prompts) -> (N,)`), optionally with `suggest` (an
            `interaction.critics.Critic`). Never the evaluation's judge.
        prompts (Sequence[str]): training prompts (duplicates are dropped).
        out_dir (str | PathLike): the run folder; an existing one is resumed if its critic, prompts and settings
            (all but `rounds`) match.
        config (AugmentConfig | None): settings; `AugmentConfig()` by default.
        progress (bool): progress bars. Default True.

    Returns:
        dict: `rounds` (each round's `done.json`: kept pairs, gain, win rate, LoRA, accepted), `loras` (the
        accepted rounds' LoRA folders, in order), `train_prompts`, `held_prompts`.
    """
    config = AugmentConfig() if config is None else config
    if not callable(getattr(critic, "score", None)):
        raise ValueError(f"`critic` is a {type(critic).__name__}; pass a scorer with score(images, prompts) -> (N,).")
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("`prompts` must be a non-empty list of non-empty strings.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out_dir` {out} is a file; pass a folder.")
    loop = _Loop(pipe, critic, prompts, out, config, progress)
    record = _record(loop, critic, config)
    record = json.loads(json.dumps(record))  # as read back: tuples are lists
    saved = out / "augment.json"
    if saved.is_file() and json.loads(saved.read_text()) != record:
        raise ValueError(
            f"{out} holds a loop with another critic, prompts or settings; pass a new `out_dir` (or delete {out})."
        )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(saved, json.dumps(record, indent=1))
    pipe.set_progress_bar_config(disable=True)
    rounds, accepted = [], []
    for r in range(1, config.rounds + 1):
        info = RoundData(out / f"round-{r:02d}").done or loop.round(r, accepted)
        rounds.append(info)
        if not info["accepted"]:
            break
        fuse_enhancements(pipe, [info["lora"]])
        accepted.append(info["lora"])
    return {"rounds": rounds, "loras": accepted, "train_prompts": loop.train, "held_prompts": loop.held}
