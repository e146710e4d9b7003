"""Issue 12, hypothesis 5: a sweep of stage-2 runs on the world, each trained in slices with its LoRA kept at each mark.

Every lane is one `discadapt tune --world` run: the bundled stage-2 recipe (`BASE`: LoRA rank 8 at lr 1e-3, the
denoising loss and the denoising contrast with 3 hard-negative captions, no adapter losses, batch 16)
with the lane's changes (`LANES`). It is trained to each of `--marks` steps in turn (`--resume` between slices; the
learning rate is constant after its warm-up, so the LoRA at mark K equals that of a K-step run) and the LoRA of each
mark is copied to OUT/LANE/lora-K. `--parallel` lanes run at once, as separate processes (on a GPU they share it).
Nothing is evaluated here: `benchmarks/tuned_variants.py --runs OUT/*/lora-*` compares them on train-split prompts.

Resumable: a rerun skips the marks already kept and resumes each lane from its newest checkpoint. With `--deadline S`
no slice starts after S seconds and running ones are stopped at S (their checkpoints stay for a rerun). To stop a
sweep by hand, stop its process group (Ctrl-C, or `kill -- -PGID`): killing the sweep's own process alone leaves the
lane it was running training on.

    python benchmarks/tune_sweep.py --out runs/tune-sweep --adapter runs/stage1-bundled --marks 1000 2000 3000 \
        --parallel 8 [--lanes c-s0 c-s1] [--extra "--mixed-precision bf16"]

`--world` (`--world-tuned` in the lanes that tune the bundled tuned model further) is the shapes world's plug-in,
registered by the installed package's entry points: on a machine where discadapt is only on PYTHONPATH, `pip install
--no-deps -e .` first (else every lane stops with "one of the arguments --pipeline --tiny is required").
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# the bundled stage 2 (README, "Retraining the bundles"), the adapter untouched (its losses are off)
BASE = (
    "--world --batch-size 16 --lr 1e-4 --lora-lr 1e-3 --warmup-steps 50 "
    "--timestep-range 0 500 --num-neg-captions 3 --num-neg-images 1 --no-random-negatives --lora-rank 8 "
    "--itm-weight 0 --rec-weight 0 --contrast-weight 1 --eval-shapes 0 --no-progress"
)
# every linear layer of the UNet's transformer blocks (attention, their input and output projections, feed-forward);
# the bundled recipe adapts the attention projections only
BLOCK_TARGETS = "to_q to_k to_v to_out.0 proj_in proj_out ff.net.0.proj ff.net.2"
# what each lane changes (later options override BASE's). The denoising loss and the contrast share their timesteps,
# drawn from the whole schedule unless --denoise-timestep-range narrows them (--timestep-range is the adapter's).
LANES = {
    "c-s0": "",  # the bundled recipe
    # seed spread, and the members of a mean of runs (`world bundle --soup`): c-s1 ... c-s15
    **{f"c-s{seed}": f"--seed {seed}" for seed in range(1, 16)},
    # control: denoising alone (more seeds: members of a mean of control runs, against the mean of the recipe's)
    **{f"d-s{seed}": f"--contrast-weight 0 --seed {seed}" for seed in range(1, 6)},
    "c-hi": "--denoise-timestep-range 500 1000",  # only the noisier half, where the layout is decided
    # more seeds of it, members of a mean of noisier-half runs (its 1,000-step point did as well as the bundled run)
    **{f"c-hi-s{seed}": f"--denoise-timestep-range 500 1000 --seed {seed}" for seed in range(1, 6)},
    "c-lo": "--denoise-timestep-range 0 500",  # only the cleaner half
    "c-w3": "--contrast-weight 3",  # the contrast weighs more
    "c-k7": "--num-neg-captions 7",  # more hard negatives per caption
    "c-tau02": "--contrast-temperature 0.02",  # sharper contrast
    "c-dp": "--shapes-phrase-negatives",  # each phrase alone among the negatives: the missing-object failure
    # rank 48 (the bundled mean of 6's rank) in one run, alpha 8 sqrt(6) (rsLoRA's scaling: an update as large as rank
    # 8's): is the mean's gain its rank or its averaging?
    **{f"c-r48-s{seed}": f"--lora-rank 48 --lora-alpha 19.6 --seed {seed}" for seed in range(3)},
    # min-SNR weighting (gamma 5) of the denoising loss: the cleaner timesteps, whose training made the sharpest
    # discriminator and the worst generator (lane c-lo), weigh less; seeds 1-3 pair with c-s1..3 and d-s1..3
    **{f"c-snr5-s{seed}": f"--snr-gamma 5 --seed {seed}" for seed in range(1, 7)},
    # a moving average of the LoRA inside each run (decay 0.998, the world pipeline's own EMA): does it do what the
    # mean of runs does? Seeds 1-3 pair with c-s1..3 (the same training; only the saved LoRA is the average)
    **{f"c-ema-s{seed}": f"--lora-ema-decay 0.998 --seed {seed}" for seed in range(1, 7)},
    # caption dropout 0.1 (the base model's own training share): the unconditional branch, which classifier-free
    # guidance extrapolates from (x3 at the demo's guidance 4), is trained to stay right instead of drifting with the
    # conditional one. Seeds 1-3 pair with c-s1..3 (the same timesteps and noise; a tenth of the captions emptied)
    **{f"c-cd-s{seed}": f"--caption-dropout 0.1 --seed {seed}" for seed in range(1, 7)},
    # the denoising loss weighs 10 times more: the contrast raises the tuned model's denoising error on training
    # scenes by about a third (conditional and unconditional alike) while the control's stays the base's, and the
    # mean's update cannot be lengthened; does keeping the fit let the contrast's direction gain more?
    **{f"c-dw10-s{seed}": f"--denoise-weight 10 --seed {seed}" for seed in range(1, 7)},
    # LoRA on the whole transformer blocks, not the attention projections alone (0.65M of the UNet's 4.2M weights;
    # with the blocks' input and output projections and feed-forward layers 1.7M): does a LoRA with more of the model
    # in reach learn the contrast at less cost in fit? (With the resnets' convolutions too, 3.7M, a step took 2.5 times
    # as long: not run.) Seeds 1-3 pair with c-s1..3
    **{f"c-ff-s{seed}": f"--lora-targets {BLOCK_TARGETS} --seed {seed}" for seed in range(1, 7)},
    # twice the batch (2 micro-steps of 16 accumulated): is a run's own part of its update (the part the mean of runs
    # averages away) its gradient noise? Seeds 1-3 pair with c-s1..3: samples, timesteps and noise follow the sample
    # stream, so at 1,000 steps a lane has seen exactly what its c-s twin saw in 2,000 (half the steps, each on twice
    # the samples); at 2,000 it has seen twice that
    **{f"c-b32-s{seed}": f"--grad-accum 2 --seed {seed}" for seed in range(1, 7)},
    # the denoising loss and the contrast only where the bundled update acts: sampling with it only after the first 30%
    # of the steps (t below about 700) keeps three quarters of its gain, only in the first 30% none of it (the
    # windows of `tuned_variants.py`). Seeds 1-3 pair with c-s1..3
    **{f"c-t700-s{seed}": f"--denoise-timestep-range 0 700 --seed {seed}" for seed in range(1, 7)},
    # the grounding loss on the cross-attention maps (each phrase's words attend inside its objects' boxes; the world
    # UNet's maps are barely above a uniform map: share in the boxes .13-.23 against .13 uniform at t=100-900).
    # Seeds 1-3 pair with c-s1..3 (the same samples, timesteps and noise; the items only gain their boxes)
    **{f"c-g-s{seed}": f"--grounding-weight 1 --shapes-phrase-boxes --seed {seed}" for seed in range(1, 7)},
    # on top of the bundled tuned model (`--world-tuned`: its stage-2 LoRA fused; a second LoRA learns): the grounding
    # loss with the denoising loss only (no contrast, which the bundled update already learnt), weights 1 and 3; its
    # control, the denoising loss alone on top; `tuned_variants.py --runs bundled+OUT/LANE/lora-K` compares them
    **{
        f"t-g{w}-s1": f"--world-tuned --grounding-weight {w} --shapes-phrase-boxes --contrast-weight 0 --seed 1"
        for w in (1, 3)
    },
    "t-d-s1": "--world-tuned --contrast-weight 0 --seed 1",
    # the same with the halves a spatial caption's relation plans for its phrases instead of its objects' boxes
    # (`--shapes-phrase-boxes planned`; other captions ungrounded): the layout term's plan, knowable from the words at
    # every noise level, where the objects' own boxes are not (the grounding of c-g-s1 took at t <= 500 only)
    "t-gp3-s1": "--world-tuned --grounding-weight 3 --shapes-phrase-boxes planned --contrast-weight 0 --seed 1",
    # the planned half of the second phrase only (`planned-second`): the first phrase's words precede the relation, so
    # the causal text encoder's states of them cannot know its half (a linear read: .29, chance .25; the second
    # phrase's .65; `position_grounding.py --words`), and grounding both, nothing moved at t >= 800
    **{
        f"t-gs{w}-s1": f"--world-tuned --grounding-weight {w} --shapes-phrase-boxes planned-second --contrast-weight 0 "
        "--seed 1"
        for w in (1, 3)
    },
    # the same where the layout is chosen only (t >= 800, the denoising loss there too): where grounding alone moved
    # the second phrase's attention toward its half (.50 to .53 in 300 steps), which the lanes above did not
    "t-gsh1-s1": "--world-tuned --grounding-weight 1 --shapes-phrase-boxes planned-second --denoise-timestep-range "
    "800 1000 --contrast-weight 0 --seed 1",
    "t-dh-s1": "--world-tuned --denoise-timestep-range 800 1000 --contrast-weight 0 --seed 1",  # its control
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def lane_args(name: str) -> list[str]:
    """`discadapt tune` options of lane `name`: the recipe's, then the lane's (`--world-tuned` replaces `--world`)."""
    lane = shlex.split(LANES[name])
    return [a for a in shlex.split(BASE) if a != "--world" or "--world-tuned" not in lane] + lane


def run_lane(name: str, out: Path, marks: list[int], extra: list[str], deadline: float | None) -> list[int]:
    """Train lane `name` to each mark in turn (`extra`: options after the lane's); return the marks kept."""
    folder = out / name
    kept = []
    for mark in marks:
        target = folder / f"lora-{mark}"
        if target.is_dir():
            kept.append(mark)
            continue
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        args = lane_args(name) + extra
        args += ["--out", str(folder), "--steps", str(mark)]
        if folder.is_dir():  # continue it, also a run stopped before its first checkpoint (it starts over)
            args.append("--resume")
        cmd = [sys.executable, "-m", "discadapt.cli", "tune", *args]
        with open(out / f"{name}.log", "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            try:
                code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=left).returncode
            except subprocess.TimeoutExpired:
                log(f"{name}: stopped at the deadline on the way to {mark} (checkpoints kept)")
                break
        if code != 0:
            log(f"{name}: exit code {code} on the way to {mark}, see {out / f'{name}.log'}")
            break
        tmp = folder / f".lora-{mark}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder / "lora", tmp)
        os.replace(tmp, target)
        kept.append(mark)
        log(f"{name}: {mark} steps")
    return kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lanes", nargs="+", default=list(LANES), choices=list(LANES))
    parser.add_argument("--marks", nargs="+", type=int, default=[1000, 2000, 3000])
    parser.add_argument("--parallel", type=int, default=1, help="lanes at once (default 1)")
    parser.add_argument("--deadline", type=float, help="seconds after which no slice runs")
    parser.add_argument(
        "--adapter", help="a stage-1 adapter to carry through (its losses are off; default: a new one, untouched)"
    )
    parser.add_argument("--extra", default="", help='options added to every lane, e.g. "--mixed-precision bf16"')
    args = parser.parse_args(argv)
    if sorted(set(args.marks)) != args.marks or args.marks[0] < 1:
        parser.error(f"--marks {args.marks}: give increasing step counts >= 1, e.g. --marks 1000 2000 3000")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = None if args.deadline is None else time.monotonic() + args.deadline
    extra = (["--adapter", args.adapter] if args.adapter else []) + shlex.split(args.extra)
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        jobs = {name: pool.submit(run_lane, name, out, args.marks, extra, deadline) for name in args.lanes}
        for name, job in jobs.items():
            log(f"{name}: kept {job.result() or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
