"""Issue 12, the measured reason of the tuned row: is it *position* or *words* that the world UNet lacks where a
layout is chosen?

Grounding alone (`TuneConfig.grounding_weight`, no other loss) toward the halves a spatial caption's relation plans
(`ShapeWorldItems(phrase_boxes="planned")`), at t in [800, 1000), on top of the bundled tuned model, LoRA rank 8 on
the attention projections at lr 1e-3, batch 16; each arm changes one thing:

- `--position`: a learned 2-D position embedding (`PositionEmbedding`, zero-initialised, so the model starts as the
  bundle) added to the input of every cross-attention block and trained with the LoRA. If noise hid *where* a query
  is, this supplies it at every noise level.
- `--phrase second`: only the second phrase is grounded. A ShapeWorld spatial caption names the first object before
  the relation ("a cyan triangle to the right of a purple circle") and the world's CLIP text encoder is causal: the
  first phrase's token states are the same whatever relation follows, so no key can tell its attention which half is
  planned. The second phrase's words come after the relation.

Then the share of each phrase's attention in its planned half on `--n` spatial train-split scenes at each `--t`
(uniform .500), per phrase, before (the bundle) and after.

With `--words N`, instead: which half the relation plans for each phrase, read linearly (`probe_accuracy`) from the
text encoder's states of the first phrase's words, the second's, and the end of text, on N spatial captions.

    python benchmarks/position_grounding.py --out runs/position-grounding/pos-both --position [--phrase second]
    python benchmarks/position_grounding.py --words 2000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import set_threads  # noqa: E402
from attention_grounding import per_phrase  # noqa: E402

from discadapt.text import encode_text  # noqa: E402
from discadapt.train import TuneConfig  # noqa: E402
from discadapt.train.data import phrase_token_mask  # noqa: E402
from discadapt.train.engine import run_training  # noqa: E402
from discadapt.train.tune import TuneObjective  # noqa: E402
from discadapt.worlds.shapes.adapter_data import ShapeWorldItems  # noqa: E402
from discadapt.worlds.shapes.bundle import load_lora, load_pipeline  # noqa: E402


class PositionEmbedding(nn.Module):
    """`hidden + W f(y, x)`: Fourier features of each cell's centre in [-1, 1]^2 (`frequencies` octaves, sin and cos
    per axis) through a zero-initialised linear map to the block's channels."""

    def __init__(self, channels: int, frequencies: int = 3):
        super().__init__()
        self.register_buffer("scales", 2.0 ** torch.arange(frequencies) * math.pi / 2, persistent=False)
        self.proj = nn.Linear(4 * frequencies, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h, w = hidden.shape[-2:]
        centres = lambda n: torch.linspace(-1 + 1 / n, 1 - 1 / n, n, device=hidden.device)  # noqa: E731
        y, x = torch.meshgrid(centres(h), centres(w), indexing="ij")
        angles = torch.stack([x, y], -1)[..., None] * self.scales  # (h, w, 2, F)
        features = torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)  # (h, w, 4F)
        return hidden + self.proj(features).permute(2, 0, 1).to(hidden.dtype)


def add_position_embeddings(unet) -> nn.ModuleDict:
    """One `PositionEmbedding` in front of every `Transformer2DModel` of `unet` (a forward pre-hook on its hidden
    states), registered as `unet.position` so that its parameters train and checkpoint with the LoRA."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    found = nn.ModuleDict()
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            embed = found[name.replace(".", "_")] = PositionEmbedding(module.config.in_channels)

            def hook(_, args, kwargs, embed=embed):
                if args:
                    return (embed(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": embed(kwargs["hidden_states"])}

            module.register_forward_pre_hook(hook, with_kwargs=True)
    unet.add_module("position", found)
    return found.requires_grad_(True)


class PositionTune(TuneObjective):
    """Stage 2 with `add_position_embeddings` after the LoRA (its parameters join the LoRA's group)."""

    def prepare_unet(self, unet) -> None:
        super().prepare_unet(unet)
        add_position_embeddings(unet)


SPATIAL = dict(negative_images=False, phrase_boxes="planned", categories=("spatial",))  # the scenes used
HALVES = ("left", "right", "top", "bottom")


def half_of(box) -> int:
    """The index in `HALVES` of a planned half `(cx, cy, w, h)`."""
    cx, cy, w, _ = box
    return (0 if cx < 0.5 else 1) if w < 1 else (2 if cy < 0.5 else 3)


@torch.no_grad()
def word_states(pipe, items: list[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{what: (states, halves)}`: the text encoder's mean state over each phrase's words ("first", "second"), with
    the index of the half planned for the phrase, and its end-of-text state ("eos") with the first phrase's half (the
    second's is its opposite)."""
    text = encode_text(pipe, [item["caption"] for item in items]).encoder_hidden_states
    ids = pipe.tokenizer([item["caption"] for item in items], padding="max_length", truncation=True).input_ids
    found = {"first": ([], []), "second": ([], []), "eos": ([], [])}
    for row, item in enumerate(items):
        words = phrase_token_mask(pipe.tokenizer, item["phrase"], item["box_spans"], text.shape[1])
        eos = text[row, ids[row].index(pipe.tokenizer.eos_token_id)]
        rows = [("first", text[row, words[0]].mean(0), 0), ("second", text[row, words[1]].mean(0), 1), ("eos", eos, 0)]
        for key, state, k in rows:
            found[key][0].append(state)
            found[key][1].append(half_of(item["boxes"][k]))
    return {key: (torch.stack(states), torch.tensor(halves)) for key, (states, halves) in found.items()}


def probe_accuracy(train: tuple, test: tuple, steps: int = 300) -> float:
    """Held-out accuracy of a linear classifier (multinomial logistic regression, L-BFGS) of halves from states."""
    (x, y), (x_test, y_test) = train, test
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = nn.Linear(x.shape[1], len(HALVES))
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear((x - mean) / std), y) + 1e-3 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (linear((x_test - mean) / std).argmax(1) == y_test).float().mean().item()


def words_table(n: int) -> None:
    """Can a linear read of the words tell which half the relation plans for each phrase?"""
    pipe = load_pipeline()
    train = ShapeWorldItems(n, split="train", seed=0, **SPATIAL)
    test = ShapeWorldItems(n // 4, split="train", seed=1, **SPATIAL)
    states = [word_states(pipe, [data[i] for i in range(len(data))]) for data in (train, test)]
    print(f"which half is planned for a phrase (4 halves, chance .25), a linear read on {n} spatial train-split "
          f"captions, accuracy on {n // 4} others")  # fmt: skip
    for key, label in (("first", "first phrase's words"), ("second", "second phrase's words"), ("eos", "end of text")):
        print(f"{label:<24}{probe_accuracy(states[0][key], states[1][key]):>7.3f}")


PHRASE_BOXES = {"both": "planned", "second": "planned-second"}  # `--phrase` -> `ShapeWorldItems(phrase_boxes=...)`


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="the run folder")
    p.add_argument("--words", type=int, metavar="N", help="only the linear read of the words, on N captions")
    p.add_argument("--position", action="store_true", help="train a position embedding in front of each block")
    p.add_argument("--phrase", choices=["both", "second"], default="both", help="which phrases are grounded")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--n", type=int, default=200, help="spatial train-split scenes measured")
    p.add_argument("--t", type=int, nargs="+", default=[100, 500, 800, 900])
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    set_threads(args.threads)
    if args.words:
        words_table(args.words)
        return 0
    if not args.out:
        p.error("pass --out DIR (the run folder), or --words N")
    measured = ShapeWorldItems(args.n, split="train", seed=1, **SPATIAL)  # not the scenes trained on (seed 0)
    items = [measured[i] for i in range(args.n)]
    pipe = load_lora(load_pipeline())
    with torch.no_grad():
        before = per_phrase(pipe, items, args.t)
    # "planned-second": the second phrase's half only, on the same scenes
    data = ShapeWorldItems(100_000, split="train", **{**SPATIAL, "phrase_boxes": PHRASE_BOXES[args.phrase]})
    config = TuneConfig(
        steps=args.steps, batch_size=16, lr=1e-4, lora_lr=1e-3, lr_warmup_steps=10, num_neg_captions=0,
        num_neg_images=0, random_negatives=False, lora_rank=8, lora_alpha=8, itm_weight=0, rec_weight=0,
        contrast_weight=0, denoise_weight=0, grounding_weight=1, denoise_timestep_range=(800, 1000),
    )  # fmt: skip
    objective = (PositionTune if args.position else TuneObjective)(pipe, data, config)
    result = run_training(objective, args.out, resume=(Path(args.out) / "train_config.json").exists())
    with torch.no_grad():
        after = per_phrase(pipe, items, args.t)
    losses = [json.loads(line)["loss"] for line in (Path(args.out) / "log.jsonl").read_text().splitlines()]
    tenth = max(len(losses) // 10, 1)
    print(f"share of each phrase's attention in its planned half, {args.n} spatial train-split scenes (uniform .500)")
    print(f"{'':<18}" + "".join(f"{f't={t}':>9}" for t in args.t))
    for name, found in (("bundled", before), ("after", after)):
        for phrase in ("first", "second"):
            print(f"{name + ' ' + phrase:<18}" + "".join(f"{found[phrase][t]:>9.3f}" for t in args.t))
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    print(f"grounding loss: first tenth {first:.3f}, last tenth {last:.3f}")
    summary = {"args": vars(args), "before": before, "after": after, "loss_first": first, "loss_last": last}
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if result["done"] else 1


if __name__ == "__main__":
    sys.exit(main())
