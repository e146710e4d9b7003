"""Issue 12, hypothesis 5 with the interaction (ArtAug): the world CLIP's judgement fused into the weights by its
gradient. A LoRA on top of the bundled tuned model (its stage-2 LoRA without what is stacked on it: this run's LoRA is
what `discadapt world bundle --stack` stacked) trained to raise `clip.HardNegativeReward` (the prompt against its
negatives, each phrase alone among them) of its own samples, backpropagated through the last `--grad-steps` DDIM steps
(`interaction.reward`, DRaFT-K), on train-split prompts: those of two objects, referring and spatial prompts that are
not among `tuned_variants.py`'s evaluation prompts, and the split's 43 counting prompts (all of them are).

The LoRA is kept at each of `--marks` steps as OUT/lora-K; compare them on train-split prompts with
`tuned_variants.py --runs bundled-unstacked bundled-unstacked+OUT/lora-K ...`. Resumable (an engine run in OUT/run).

    python benchmarks/reward_tuning.py --out runs/reward/k25-anchor --categories two_objects spatial referring \
        --anchor-counting 4  # the chosen run (issue 12's table); the defaults: 25 grad steps, lr 3e-4, 100 200 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from augment_shapes import MULTI, train_prompts  # noqa: E402

from discadapt.interaction import EnhanceConfig  # noqa: E402
from discadapt.interaction.reward import RewardObjective  # noqa: E402
from discadapt.text import get_unet  # noqa: E402
from discadapt.train.engine import run_training  # noqa: E402
from discadapt.train.tune import save_lora  # noqa: E402
from discadapt.worlds.shapes.bundle import load_clip, load_lora, load_pipeline  # noqa: E402
from discadapt.worlds.shapes.clip.reward import HardNegativeReward  # noqa: E402

EVALUATED = 120  # prompts per category of `tuned_variants.py`'s train-split comparison


def reward_prompts(per_category: int, categories=MULTI) -> list[str]:
    """Train-split prompts of `categories` not among the evaluated ones, `per_category` at most, and every counting
    prompt (when counting is among them)."""
    evaluated = train_prompts(EVALUATED)
    found: dict[str, int] = {}
    chosen = []
    for prompt, category in train_prompts(4 * per_category, seed=1).items():
        if category not in categories:
            continue
        if category == "counting" or (prompt not in evaluated and found.get(category, 0) < per_category):
            found[category] = found.get(category, 0) + 1
            chosen.append(prompt)
    return chosen


class MarkedReward(RewardObjective):
    """`RewardObjective` that keeps its LoRA at the marks, OUT/lora-K."""

    marks: tuple[int, ...] = ()
    out: Path = Path()

    def after_step(self, step: int) -> None:
        if step + 1 in self.marks:
            save_lora(self.pipe, self.out / f"lora-{step + 1}")


class AnchoredReward(MarkedReward):
    """`MarkedReward` with `anchor_batch` more samples a micro-batch, of the `anchors` prompts, that get no reward: at
    every state of their own trajectories the UNet's predictions are held to the model's without the new LoRA,
    `anchor_weight` times the squared difference (a mean over elements, summed over the steps), so that what the
    reward changes elsewhere leaves these prompts' pictures as they were (a KL penalty on their sampler's steps)."""

    anchor_batch = 0
    anchor_weight = 0.0

    def __init__(self, pipe, prompts, anchors, reward, config, **sampling):
        super().__init__(pipe, [*prompts, *anchors], reward, config, **sampling)
        self.rewarded, self.anchors = len(prompts), list(anchors)

    def micro_batches(self, first: int, count: int, accelerator):
        for m, (idx, noise) in enumerate(super().micro_batches(first, count, accelerator), start=first):
            g = torch.Generator().manual_seed(1_000_003 * (self.config.seed + 1) + m)
            idx = torch.randint(self.rewarded, idx.shape, generator=g)  # the rewarded prompts only
            anchored = self.rewarded + torch.randint(len(self.anchors), (self.anchor_batch,), generator=g)
            yield torch.cat([idx, anchored]), torch.cat([noise, torch.randn((self.anchor_batch, *noise.shape[1:]),
                                                                            generator=g)])  # fmt: skip

    def loss(self, model, batch, step: int, accelerator) -> dict[str, torch.Tensor]:
        idx, noise = batch
        n, unet, device, states = len(idx) - self.anchor_batch, get_unet(self.pipe), accelerator.device, []
        images = self.sample(model, idx[:n], noise[:n], device)
        reward = self.reward(images, [self.prompts[i] for i in idx[:n].tolist()])
        # the anchors' own trajectories, without a graph: the penalty moves the LoRA at the states the sampler visits,
        # not the states through the chain
        keep = lambda i, t, z2, text, pred: states.append((z2, t, text.encoder_hidden_states))  # noqa: E731
        with torch.no_grad():
            self.sample(model, idx[n:], noise[n:], device, on_step=keep)  # the images unused
        z = torch.cat([s[0] for s in states])
        t = torch.cat([s[1].expand(len(s[0])) for s in states])
        text = torch.cat([s[2] for s in states])
        prediction = model(z, t, text).sample.float()
        unet.disable_adapters()  # the model before this LoRA (the bundle's is fused into the weights)
        try:
            with torch.no_grad():
                reference = unet(z, t, text).sample.float()
        finally:
            unet.enable_adapters()
        drift = (prediction - reference).pow(2).mean() * len(states)  # a mean over elements, summed over the steps
        return {"loss": -reward.mean() + self.anchor_weight * drift, "reward": reward.detach().mean(),
                "drift": drift.detach()}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--marks", nargs="+", type=int, default=[100, 200, 300])
    p.add_argument("--grad-steps", type=int, default=25, help="the last sampler steps the gradient flows through")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--prompts-per-category", type=int, default=140)
    p.add_argument("--categories", nargs="+", choices=MULTI, default=list(MULTI), help="the prompts' categories")
    p.add_argument(
        "--anchor-counting",
        type=int,
        default=0,
        metavar="N",
        help="N counting samples a micro-batch held to the model's predictions, no reward (default 0: off)",
    )
    p.add_argument("--anchor-weight", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    set_threads(args.threads)
    out = Path(args.out)
    pipe = load_lora(load_pipeline(), stack=False)
    config = EnhanceConfig(steps=max(args.marks), batch_size=args.batch_size, lr=args.lr, lora_rank=8, lora_alpha=8,
                           warmup_steps=10, checkpoint_every=50, seed=args.seed)  # fmt: skip
    prompts, reward = reward_prompts(args.prompts_per_category, args.categories), HardNegativeReward(load_clip())
    sampling = {"grad_steps": args.grad_steps, "reward_name": "world CLIP hard negatives"}
    if args.anchor_counting:
        anchors = reward_prompts(args.prompts_per_category, ["counting"])
        objective = AnchoredReward(pipe, prompts, anchors, reward, config, **sampling)
        objective.anchor_batch, objective.anchor_weight = args.anchor_counting, args.anchor_weight
        objective.sampling.update(anchor_batch=args.anchor_counting, anchor_weight=args.anchor_weight)
    else:
        objective = MarkedReward(pipe, prompts, reward, config, **sampling)
    objective.marks, objective.out = tuple(args.marks), out
    result = run_training(objective, out / "run", resume=(out / "run").exists(), progress=False)
    print(f"done at step {result['step']}: {', '.join(str(out / f'lora-{m}') for m in args.marks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
