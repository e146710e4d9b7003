"""How fast does the early-exit probe score (image, text) pairs, compared with a full UNet forward?

Three ways to score B (latent, prompt) pairs on the same pipeline, timed in the same run:

- `full-unet`: the baseline, what a scorer without early exit pays: encode the prompts, noise the latents
  to t=500 and run one full UNet forward per pair (`unet(x_t, t, encoder_hidden_states).sample`).
- `early-exit probe + adapter`: `discadapt.itm_score(..., t=500)`: the same steps, but the UNet stops after
  the probed block, and the discriminative adapter (default size) reads the features.
- `denoising score (10 t)`: `discadapt.denoising_score(..., num_timesteps=10)`, the DiffusionITM baseline:
  ten full UNet forwards per pair.

Models (random weights, built offline by `discadapt.testing`):

- `tiny`: `tiny_sd_pipeline()` at its 16x16 latents, probing `up_blocks.0`.
- `sd15`: a UNet with Stable Diffusion 1.5's config at 64x64 latents (512px images), probing `up_blocks.1`
  (1280 channels at 32x32); the text encoder has SD 1.5's width but one layer.

Each row is timed as the median of `--repeats` calls after one warm-up call, and reported as pairs per
second and as a ratio to the `full-unet` row of the same model. Every call scores `8 x --batch-size` pairs,
except SD 1.5 on the CPU, where one UNet forward takes seconds: there the batch is at most 2, the full and
probe rows score one batch per call, and the denoising row scores a single pair once (ten forwards), after
a one-timestep warm-up. About 2 minutes on 2 idle CPU cores; seconds on a GPU.

Run:
    python benchmarks/probe_speed.py                      # both models on the CPU, float32
    python benchmarks/probe_speed.py --models tiny        # quick check
    python benchmarks/probe_speed.py --device cuda --dtype float16 --json probe_speed.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's discadapt, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, log, sync  # noqa: E402

from discadapt import DiscriminativeAdapter, FeatureProbe, denoising_score, encode_text, itm_score  # noqa: E402
from discadapt.testing import sd_pipeline, tiny_sd_pipeline, unet_config  # noqa: E402

MODELS = {
    "tiny": dict(build=tiny_sd_pipeline, latent_size=16, layers=["up_blocks.0"]),
    "sd15": dict(build=lambda: sd_pipeline(unet_config("sd15")), latent_size=64, layers=["up_blocks.1"]),
}
HEAVY_ON_CPU = {"sd15"}  # seconds per UNet forward on a CPU: time fewer pairs
TIMESTEP = 500
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
load_seen: list[float] = []  # 1-minute load average after each timed call: other jobs on the CPU skew timings


def full_unet(pipe, latents, prompts, t: int, batch_size: int) -> None:
    """The baseline scorer: one full UNet forward per pair, in batches, with the same text encoding and
    noising as `itm_score`."""
    unet = pipe.unet
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    noise = torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(0)).to(latents)
    with torch.no_grad():
        text = encode_text(pipe, prompts)
        for start in range(0, len(prompts), batch_size):
            x0 = latents[start : start + batch_size]
            steps = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)
            xt = scheduler.add_noise(x0, noise.expand_as(x0), steps)
            unet(xt, steps, text.encoder_hidden_states[start : start + batch_size]).sample


def time_rows(rows: list[dict], device: torch.device) -> list[float]:
    """Median seconds of each row's timed calls, after one warm-up call each. The timed calls are
    interleaved (one of each row per round), so a change of load on a shared machine hits every row alike."""
    for row in rows:
        log(f"  warm-up: {row['method']}")
        (row["warmup"] or row["fn"])()
        sync(device)
    times: list[list[float]] = [[] for _ in rows]
    for round_ in range(max(row["repeats"] for row in rows)):
        for row, row_times in zip(rows, times):
            if round_ < row["repeats"]:
                log(f"  round {round_ + 1}: {row['method']} ({row['pairs']} pairs)")
                start = time.perf_counter()
                row["fn"]()
                sync(device)
                row_times.append(time.perf_counter() - start)
                load_seen.append(os.getloadavg()[0])
    return [statistics.median(row_times) for row_times in times]


def bench_model(name: str, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    spec = MODELS[name]
    layers = args.layers or spec["layers"]
    size = spec["latent_size"]
    heavy = device.type == "cpu" and name in HEAVY_ON_CPU
    batch = min(args.batch_size, 2) if heavy else args.batch_size
    pairs = batch if heavy else 8 * batch
    denoise_pairs, denoise_repeats = (1, 1) if heavy else (pairs, args.repeats)

    log(f"[{name}] building the pipeline and the adapter ...")
    pipe = spec["build"]().to(device)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=layers).eval()
    if dtype != torch.float32:  # diffusers warns on every cast, so only when asked
        pipe.to(dtype=dtype)
        adapter.to(dtype=dtype)
    info = FeatureProbe(pipe.unet, layers).describe(size, size)
    print(
        f"\n{name}: {size}x{size} latents, batch {batch}; {pairs} pairs per call, median of {args.repeats} calls "
        f"(denoising: {denoise_pairs} pairs, {denoise_repeats} calls)"
    )
    for layer, feature in info.items():
        print(f"  probed {layer}: {feature}")

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(pairs, pipe.unet.config.in_channels, size, size, generator=generator).to(device, dtype)
    prompts = [f"a photo of {k} red cubes on a table" for k in range(pairs)]
    few_latents, few_prompts = latents[:denoise_pairs], prompts[:denoise_pairs]

    def denoise(num_timesteps):
        return lambda: denoising_score(pipe, few_latents, few_prompts, num_timesteps=num_timesteps, batch_size=batch)

    rows = [
        dict(
            method="full-unet",
            pairs=pairs,
            repeats=args.repeats,
            fn=lambda: full_unet(pipe, latents, prompts, TIMESTEP, batch),
            warmup=None,
        ),
        dict(
            method="early-exit probe + adapter",
            pairs=pairs,
            repeats=args.repeats,
            fn=lambda: itm_score(pipe, adapter, latents, prompts, t=TIMESTEP, batch_size=batch),
            warmup=None,
        ),
        dict(
            method="denoising score (10 t)",
            pairs=denoise_pairs,
            repeats=denoise_repeats,
            fn=denoise(10),
            # Where a call takes minutes, one timestep warms up enough: the same kernels at the same shapes.
            warmup=denoise(1) if heavy else None,
        ),
    ]
    log(f"[{name}] timing ...")
    results = []
    for row, seconds in zip(rows, time_rows(rows, device)):
        n = row["pairs"]
        results.append(
            dict(
                model=name,
                method=row["method"],
                pairs=n,
                batch_size=min(batch, n),
                timed_calls=row["repeats"],
                seconds=seconds,
                pairs_per_s=n / seconds,
            )
        )
    baseline = results[0]["pairs_per_s"]
    for row in results:
        row.update(ratio_vs_full=row["pairs_per_s"] / baseline, layers=layers, device=str(device), dtype=args.dtype)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "sd15"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="float16 is typical on cuda")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per UNet call (at most 2 for sd15 on cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row, after one warm-up; median")
    parser.add_argument("--layers", nargs="+", help="probed UNet blocks, for every model (default: per model)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as a JSON list")
    args = parser.parse_args()
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be at least 1.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device.")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    start = time.perf_counter()
    results = [row for name in args.models for row in bench_model(name, args, device, dtype)]
    total = time.perf_counter() - start

    print(f"\nITM pairs/s on {args.device} ({args.dtype}), t={TIMESTEP}, timed after 1 warm-up per row\n")
    print("| model | method | pairs/s | vs full UNet |")
    print("|---|---|---|---|")
    for row in results:
        print(f"| {row['model']} | {row['method']} | {row['pairs_per_s']:.3g} | {row['ratio_vs_full']:.2f}x |")
    finish(results, total, load_seen, device, args.json)


if __name__ == "__main__":
    main()
