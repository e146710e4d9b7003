"""What does self-correction cost per generated image, compared with vanilla sampling?

Five rows per model, each a full `pipe(prompts, ...)` call with the same prompts, seed, number of steps and
guidance scale, timed in the same run:

- `vanilla`: the baseline, the pipeline without a callback.
- `plain`: `SelfCorrection(..., mode="plain")`: an extra early-exit UNet forward (up to the probed block) and
  its backward per corrected step.
- `reuse`: `SelfCorrection(..., mode="reuse")`: the sampler's own UNet pass keeps its graph up to the probed
  block, and one partial backward per corrected step gives the gradient (the first corrected step uses the plain
  gradient).

Each correction mode runs with the full window (start=0, stop=1) and a partial one (start=0, stop=0.5); the
`window` column also says how many of the steps were corrected (the callback corrects the latent for the next
timestep, so at most steps - 1). The adapter is untrained (random weights): the speed does not depend on
its weights. The correction uses `normalize="unit"` and a small `scale`, so the latents stay finite.

Times are of the whole pipeline call as a user sees it: text encoding, the denoising loop, the callback (a new
`SelfCorrection` per call, so its prompt encoding and pipeline check are included), and the VAE decode and
image conversion. Seconds per image is the median call time divided by the number of prompts (one image each).

Peak memory, measured during each row's warm-up call: on CUDA, `torch.cuda.max_memory_allocated` (reset before
the row); on the CPU, the process's peak resident set size (Linux: `VmHWM`, reset through
`/proc/self/clear_refs` after `malloc_trim`, so earlier rows' freed memory does not count), or "n/a" where that
is not available. Both include the model weights; the parentheses give the difference from the vanilla row.

Models (random weights, built offline by `discadapt.testing`):

- `tiny`: `tiny_sd_pipeline()` at its 16x16 latents, probing `up_blocks.0`.
- `sd15`: a UNet with Stable Diffusion 1.5's config at 64x64 latents, probing `up_blocks.1`; the text encoder
  has SD 1.5's width but one layer, and the VAE is the tiny one (128px images), so the decode costs less than
  SD 1.5's real VAE would and the ratios are a little above a real pipeline's. On the CPU one UNet forward takes
  seconds, so there the defaults are 4 steps, 1 prompt and 1 timed call (minutes on 2 idle cores); its main
  target is CUDA.

Run:
    python benchmarks/sampler_overhead.py --models tiny          # quick check on the CPU
    python benchmarks/sampler_overhead.py --models sd15 --steps 4 --prompts 1 --repeats 1
    python benchmarks/sampler_overhead.py --models sd15 --device cuda --dtype float16 --steps 30 --json out.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's discadapt, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, log, sync  # noqa: E402

from discadapt import DiscriminativeAdapter  # noqa: E402
from discadapt.sampling import SelfCorrection  # noqa: E402
from discadapt.testing import sd_pipeline, tiny_sd_pipeline, unet_config  # noqa: E402

MODELS = {
    "tiny": dict(build=tiny_sd_pipeline, latent_size=16, layers=["up_blocks.0"]),
    "sd15": dict(build=lambda: sd_pipeline(unet_config("sd15")), latent_size=64, layers=["up_blocks.1"]),
}
HEAVY_ON_CPU = {"sd15"}  # seconds per UNet forward on a CPU: fewer steps, prompts and calls by default
DEFAULTS = dict(steps=10, prompts=4, repeats=5)
HEAVY_DEFAULTS = dict(steps=4, prompts=1, repeats=1)
WINDOWS = [(0.0, 1.0), (0.0, 0.5)]
SCALE = 0.1  # with normalize="unit": a step of length 0.1 in latent space per corrected step
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GIB = 2**30
load_seen: list[float] = []  # 1-minute load average after each timed call: other jobs on the CPU skew timings


# peak memory ---------------------------------------------------------------------------------------------------
def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise KeyError(field)


def _reset_cpu_peak() -> int | None:
    """Return freed heap memory to the OS, reset the peak RSS, and return the current RSS; None if unsupported."""
    try:
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed memory resident otherwise
        except (OSError, AttributeError):
            pass
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return _proc_status_bytes("VmRSS")
    except (OSError, KeyError, ValueError):
        return None


def measure_peak(fn, device: torch.device) -> tuple[int | None, int | None]:
    """Run `fn` once; return (memory at its start, peak memory during it) in bytes, or (None, None)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return start, torch.cuda.max_memory_allocated(device)
    start = _reset_cpu_peak()
    fn()
    if start is None:
        return None, None
    return start, _proc_status_bytes("VmHWM")


# timing ---------------------------------------------------------------------------------------------------------
def time_rows(rows: list[dict], repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each row's timed calls, after one warm-up call each (which also measures the peak
    memory). The timed calls are interleaved (one of each row per round), so a change of load on a shared
    machine hits every row alike."""
    for row in rows:
        log(f"  warm-up and peak memory: {row['method']} {row['window']}")
        row["memory_start"], row["memory_peak"] = measure_peak(row["fn"], device)
    times: list[list[float]] = [[] for _ in rows]
    for round_ in range(repeats):
        for row, row_times in zip(rows, times):
            log(f"  round {round_ + 1}: {row['method']} {row['window']}")
            start = time.perf_counter()
            row["fn"]()
            sync(device)
            row_times.append(time.perf_counter() - start)
            load_seen.append(os.getloadavg()[0])
    return [statistics.median(row_times) for row_times in times]


def bench_model(name: str, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    spec = MODELS[name]
    size, layers = spec["latent_size"], spec["layers"]
    defaults = HEAVY_DEFAULTS if device.type == "cpu" and name in HEAVY_ON_CPU else DEFAULTS
    steps = args.steps or defaults["steps"]
    n_prompts = args.prompts or defaults["prompts"]
    repeats = args.repeats or defaults["repeats"]

    log(f"[{name}] building the pipeline and the adapter ...")
    pipe = spec["build"]().to(device)
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=layers).eval()
    if dtype != torch.float32:  # diffusers warns on every cast, so only when asked
        pipe.to(dtype=dtype)
        adapter.to(dtype=dtype)
    prompts = [f"a photo of {k + 1} red cubes on a wooden table" for k in range(n_prompts)]
    height = size * pipe.vae_scale_factor
    print(
        f"\n{name}: {size}x{size} latents ({height}px images), {n_prompts} prompt(s) per call, {steps} steps, "
        f"guidance {args.guidance}, probed {layers}; median of {repeats} timed calls per row"
    )

    def generate(callback=None):
        return pipe(
            prompts,
            height=height,
            width=height,
            num_inference_steps=steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=callback,
            callback_on_step_end_tensor_inputs=["latents"] if callback is not None else None,
        )

    def corrected(mode: str, start: float, stop: float):
        def fn():
            fix = SelfCorrection(adapter, prompts, scale=SCALE, start=start, stop=stop, normalize="unit", mode=mode)
            try:
                generate(fix)
            finally:
                fix.remove()  # reuse mode detaches itself after the last step; this covers a failed call

        return fn

    probe_fix = SelfCorrection(adapter, prompts)
    pipe.scheduler.set_timesteps(steps, device=device)
    rows = [dict(method="vanilla", window="-", start=None, stop=None, corrected_steps=0, fn=generate)]
    for mode in ("plain", "reuse"):
        for start, stop in WINDOWS:
            probe_fix.start, probe_fix.stop = start, stop
            corrected_steps = sum(probe_fix.step_size(pipe, i) > 0 for i in range(steps))  # the callback's rule
            rows.append(
                dict(
                    method=mode,
                    window=f"{start:g}-{stop:g} ({corrected_steps}/{steps} steps)",
                    start=start,
                    stop=stop,
                    corrected_steps=corrected_steps,
                    fn=corrected(mode, start, stop),
                )
            )

    log(f"[{name}] timing ...")
    results = []
    for row, seconds in zip(rows, time_rows(rows, repeats, device)):
        results.append(
            dict(
                model=name,
                method=row["method"],
                window_start=row["start"],
                window_stop=row["stop"],
                window=row["window"],
                corrected_steps=row["corrected_steps"],
                steps=steps,
                images=n_prompts,
                guidance=args.guidance,
                timed_calls=repeats,
                seconds_per_call=seconds,
                seconds_per_image=seconds / n_prompts,
                memory_start_bytes=row["memory_start"],
                memory_peak_bytes=row["memory_peak"],
            )
        )
    base = results[0]
    for row in results:
        row.update(
            ratio_vs_vanilla=row["seconds_per_image"] / base["seconds_per_image"],
            memory_kind="cuda max_memory_allocated" if device.type == "cuda" else "cpu peak RSS (VmHWM)",
            layers=layers,
            device=str(device),
            dtype=args.dtype,
        )
    return results


def memory_cell(row: dict, base: dict) -> str:
    if row["memory_peak_bytes"] is None:
        return "n/a"
    peak = row["memory_peak_bytes"] / GIB
    if row is base or base["memory_peak_bytes"] is None:
        return f"{peak:.2f} GiB"
    return f"{peak:.2f} GiB ({(row['memory_peak_bytes'] - base['memory_peak_bytes']) / GIB:+.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "sd15"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="float16 is typical on cuda")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 10; 4 for sd15 on cpu)")
    parser.add_argument("--prompts", type=int, help="prompts (= images) per call (default: 4; 1 for sd15 on cpu)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (<= 1: off)")
    parser.add_argument(
        "--repeats", type=int, help="timed calls per row, after one warm-up; median (default: 5; 1 for sd15 on cpu)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as a JSON list")
    args = parser.parse_args()
    for option in ("steps", "prompts", "repeats"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device.")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    start = time.perf_counter()
    results = [row for name in args.models for row in bench_model(name, args, device, dtype)]
    total = time.perf_counter() - start

    kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of the process"
    print(
        f"\nSeconds per image on {args.device} ({args.dtype}), whole pipeline call (VAE decode included), "
        f"timed after 1 warm-up per row; peak memory: {kind}, (+ vs vanilla)\n"
    )
    print("| model | method | window | s/image | vs vanilla | peak memory |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        rows = [row for row in results if row["model"] == name]
        for row in rows:
            print(
                f"| {name} | {row['method']} | {row['window']} | {row['seconds_per_image']:.3g} | "
                f"{row['ratio_vs_vanilla']:.2f}x | {memory_cell(row, rows[0])} |"
            )
    finish(results, total, load_seen, device, args.json)


if __name__ == "__main__":
    main()
