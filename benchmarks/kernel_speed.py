"""How fast are discadapt's Triton kernels, against the PyTorch references and the device's ceilings?

For each op of `discadapt.kernels` (the adapter's feature intake, the ITM logits), at SD 1.5 and SDXL sizes and each
batch size, one run times three implementations, forward and forward + backward:

- `eager`: the PyTorch reference (`intake_ref`, `itm_ref`), the baseline of every ratio;
- `compile`: `torch.compile` of the same reference;
- `triton`: the kernel (`intake_triton`, `itm_triton`; what the adapter runs on CUDA).

Times are medians of `triton.testing.do_bench`. Each row also gives the bandwidth and FLOP/s it achieves, from the
op's minimal traffic (every input read once, every output written once) and its model FLOPs (the intake: the
projection at grid resolution, 2 B h w C D, as the kernel computes it; the reference projects before pooling, so it
does more), against the ceilings measured in the same run: a 1 GiB device copy (bandwidth) and a 8192^3 matrix product
in the run's dtype (FLOP/s; float32 follows `torch.backends.cudnn.allow_tf32`, as the kernel does).

End to end: self-correction's overhead per image (`SelfCorrection`, plain and reuse modes) on an SD 1.5-sized
pipeline (random weights, the tiny VAE), kernels on and off (`DISCADAPT_KERNELS=0`), against the same pipeline
without correction.

Sizes (B = each of `--batch-sizes`, D = 256, the adapter's default width):
- intake `sd15-up1`: 1280 x 32 x 32 (SD 1.5 up_blocks.1 at 512 px), grid 32 x 32;
- intake `sd15-up1+up2`: 1280 x 32 x 32 and 640 x 64 x 64 (up_blocks.2, pooled), grid 32 x 32;
- intake `sdxl-up0`: 1280 x 64 x 64 (SDXL up_blocks.0 at 1024 px), grid 64 x 64;
- ITM `sd15`/`sdxl`: 8 queries against pooled text of width 768 / 1280, pairwise (B texts) and all pairs (B x B).

Run (on a CUDA machine; a few minutes, most of it torch.compile):
    python benchmarks/kernel_speed.py --device cuda                     # bfloat16, batches 8 and 32
    python benchmarks/kernel_speed.py --device cuda --dtype float16 --batch-sizes 16 --json kernels.json
    python benchmarks/kernel_speed.py --smoke  # CPU: tiny sizes in the Triton interpreter (end to end)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    if "--smoke" in sys.argv:  # the interpreter must be on before anything imports triton
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's discadapt, installed or not
    from _common import finish, log, sync

    from discadapt import DiscriminativeAdapter
    from discadapt.kernels import _dispatch, intake_ref, intake_triton, itm_ref, itm_triton
    from discadapt.sampling import SelfCorrection
    from discadapt.testing import sd_pipeline, tiny_sd_pipeline, unet_config

DTYPES = ("bfloat16", "float16", "float32")
HIDDEN = 256
INTAKE_CASES = {  # maps as (C, H, W), grid
    "sd15-up1": ([(1280, 32, 32)], (32, 32)),
    "sd15-up1+up2": ([(1280, 32, 32), (640, 64, 64)], (32, 32)),
    "sdxl-up0": ([(1280, 64, 64)], (64, 64)),
}
ITM_CASES = {"sd15": 768, "sdxl": 1280}  # pooled text width
QUERIES = 8
SMOKE = dict(intake={"smoke": ([(37, 9, 7), (13, 3, 3)], (5, 5))}, itm={"smoke": 37}, hidden=24, queries=5)
load_seen: list[float] = []


# timing ---------------------------------------------------------------------------------------------------------------
def bench(fn, device: torch.device, smoke: bool) -> float:
    """Median milliseconds of `fn`: triton.testing.do_bench on CUDA; in smoke mode, 3 timed calls after 1."""
    if not smoke:
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    load_seen.append(os.getloadavg()[0])
    return statistics.median(times)


def ceilings(device: torch.device, dtype: torch.dtype, smoke: bool) -> dict:
    """Measured peak bandwidth (a large copy) and matrix-product FLOP/s in `dtype`, in GB/s and TFLOP/s."""
    n_copy, n_mm = (2**20, 256) if smoke else (2**28, 8192)
    x = torch.empty(n_copy, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    copy_ms = bench(lambda: y.copy_(x), device, smoke)
    a = torch.randn(n_mm, n_mm, device=device).to(dtype)
    b = torch.randn(n_mm, n_mm, device=device).to(dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32  # as the kernels' float32 path
    try:
        mm_ms = bench(lambda: a @ b, device, smoke)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return dict(gb_per_s=2 * x.numel() * 4 / copy_ms / 1e6, tflop_per_s=2 * n_mm**3 / mm_ms / 1e9)


# the ops --------------------------------------------------------------------------------------------------------------
def intake_problem(case, batch: int, hidden: int, dtype, device):
    shapes, size = case
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dt)

    maps = [randn(batch, *s) for s in shapes]
    weights = [randn(hidden, s[0], 1, 1, scale=s[0] ** -0.5) for s in shapes]
    biases = [randn(hidden) for _ in shapes]
    pos, temb = randn(size[0] * size[1], hidden, dt=torch.float32), randn(batch, hidden)
    leaves = [*maps, *weights, *biases, pos, temb]
    n = len(maps)

    def call(fn):
        return lambda *xs: fn(list(xs[:n]), list(xs[n : 2 * n]), list(xs[2 * n : 3 * n]), xs[-2], xs[-1], size)

    es, grid = torch.finfo(dtype).bits // 8, size[0] * size[1]
    map_bytes = sum(m.numel() for m in maps) * es
    weight_bytes = sum(w.numel() for w in weights) * es
    out_bytes = batch * grid * hidden * es
    small = (hidden * n + batch * hidden) * es + grid * hidden * 4
    gemm = sum(2 * batch * grid * s[0] * hidden for s in shapes)
    return dict(
        leaves=leaves,
        ref=call(intake_ref),
        kernel=call(intake_triton),
        fwd_bytes=map_bytes + weight_bytes + small + out_bytes,
        fwd_flops=gemm,
        # backward: read dtokens, maps and weights; write dmaps, dweights, the small gradients
        bwd_bytes=out_bytes + 2 * map_bytes + 2 * weight_bytes + small,
        bwd_flops=2 * gemm,
    )


def itm_problem(dim: int, batch: int, pairwise: bool, queries: int, dtype, device):
    g = torch.Generator().manual_seed(0)
    n_texts = batch
    q = torch.nn.functional.normalize(torch.randn(batch, queries, dim, generator=g), dim=-1).to(device, dtype)
    t = torch.randn(n_texts, dim, generator=g).to(device, dtype)
    scale = torch.tensor(2.66, device=device)
    es, pairs = torch.finfo(dtype).bits // 8, batch * (1 if pairwise else n_texts)
    io = (q.numel() + t.numel()) * es + pairs * 4
    return dict(
        leaves=[q, t, scale],
        ref=lambda *xs: itm_ref(*xs, pairwise=pairwise),
        kernel=lambda *xs: itm_triton(*xs, pairwise=pairwise),
        fwd_bytes=io,
        fwd_flops=2 * pairs * queries * dim + 2 * (q.numel() + t.numel()),
        bwd_bytes=2 * io,
        bwd_flops=4 * pairs * dim,
    )


def time_problem(problem, device, smoke: bool, compile_ref: bool) -> list[dict]:
    """eager / compile / triton, forward and forward + backward, of one problem."""
    leaves = [x.detach().requires_grad_(True) for x in problem["leaves"]]
    impls = {"eager": problem["ref"], "triton": problem["kernel"]}
    if compile_ref:
        impls = {"eager": problem["ref"], "compile": torch.compile(problem["ref"], dynamic=False), **impls}
    out = problem["ref"](*leaves)
    grad_out = torch.randn_like(out)
    rows = []
    for impl, fn in impls.items():
        log(f"    {impl}")

        def forward(fn=fn):
            with torch.no_grad():
                fn(*leaves)

        def forward_backward(fn=fn):
            torch.autograd.grad(fn(*leaves), leaves, grad_out)

        both = (problem["fwd_bytes"] + problem["bwd_bytes"], problem["fwd_flops"] + problem["bwd_flops"])
        for pass_, call, nbytes, flops in [
            ("fwd", forward, problem["fwd_bytes"], problem["fwd_flops"]),
            ("fwd+bwd", forward_backward, *both),
        ]:
            ms = bench(call, device, smoke)
            rows.append(dict(impl=impl, pass_=pass_, ms=ms, gb_per_s=nbytes / ms / 1e6, tflop_per_s=flops / ms / 1e9))
    return rows


def op_rows(args, device, dtype, ceiling) -> list[dict]:
    smoke = args.smoke
    hidden = SMOKE["hidden"] if smoke else HIDDEN
    queries = SMOKE["queries"] if smoke else QUERIES
    intake_cases = SMOKE["intake"] if smoke else INTAKE_CASES
    itm_cases = SMOKE["itm"] if smoke else ITM_CASES
    batches = [3] if smoke else args.batch_sizes
    problems = []
    for batch in batches:
        for name, case in intake_cases.items():
            problems.append(
                ("intake", name, batch, lambda c=case, b=batch: intake_problem(c, b, hidden, dtype, device))
            )
        for name, dim in itm_cases.items():
            for pairwise in (True, False):
                label = f"{name}-{'pairwise' if pairwise else 'all-pairs'}"
                build = lambda d=dim, b=batch, p=pairwise: itm_problem(d, b, p, queries, dtype, device)  # noqa: E731
                problems.append(("itm", label, batch, build))
    results = []
    for op, name, batch, build in problems:
        log(f"  {op} {name}, batch {batch}")
        rows = time_problem(build(), device, smoke, not args.no_compile)
        eager = {row["pass_"]: row["ms"] for row in rows if row["impl"] == "eager"}
        for row in rows:
            row.update(
                op=op,
                case=name,
                batch=batch,
                dtype=args.dtype,
                speedup_vs_eager=eager[row["pass_"]] / row["ms"],
                bandwidth_fraction=row["gb_per_s"] / ceiling["gb_per_s"],
                flops_fraction=row["tflop_per_s"] / ceiling["tflop_per_s"],
            )
            results.append(row)
    return results


# end to end: self-correction ------------------------------------------------------------------------------------------
def self_correction_rows(args, device, dtype) -> list[dict]:
    """Seconds per image of the pipeline without correction, and with plain / reuse correction, kernels on and off."""
    if args.smoke:
        pipe, layers, size, steps, n_prompts, repeats = tiny_sd_pipeline(), ["up_blocks.0"], 16, 2, 1, 1
        _dispatch._KERNEL_DEVICES = ("cuda", "cpu")  # route the dispatchers to the interpreted kernels
    else:
        pipe, layers, size = sd_pipeline(unet_config("sd15")), ["up_blocks.1"], 64
        steps, n_prompts, repeats = args.steps, args.prompts, 3
    pipe.to(device)
    torch.manual_seed(0)
    adapter = DiscriminativeAdapter.for_pipeline(pipe, layers=layers).eval()
    if dtype != torch.float32 and not args.smoke:  # diffusers warns on every cast, so only when asked
        pipe.to(dtype=dtype)
        adapter.to(dtype=dtype)
    prompts = [f"a photo of {k + 1} red cubes on a wooden table" for k in range(n_prompts)]
    height = size * pipe.vae_scale_factor

    def generate(mode=None, kernels="1"):
        def fn():
            os.environ[_dispatch.ENV_VAR] = kernels
            fix = None
            if mode is not None:
                fix = SelfCorrection(adapter, prompts, scale=0.1, normalize="unit", mode=mode)
            try:
                pipe(
                    prompts,
                    height=height,
                    width=height,
                    num_inference_steps=steps,
                    guidance_scale=5.0,
                    generator=torch.Generator().manual_seed(0),
                    callback_on_step_end=fix,
                    callback_on_step_end_tensor_inputs=["latents"] if fix is not None else None,
                )
            finally:
                if fix is not None:
                    fix.remove()
                os.environ.pop(_dispatch.ENV_VAR, None)

        return fn

    rows = [dict(method="vanilla", kernels="-", fn=generate())]
    for mode in ("plain", "reuse"):
        for kernels in ("1", "0"):
            rows.append(dict(method=mode, kernels="on" if kernels == "1" else "off", fn=generate(mode, kernels)))
    log(f"  self-correction: {n_prompts} prompt(s), {steps} steps, {size}x{size} latents, probed {layers}")
    for row in rows:
        row["fn"]()  # warm-up (and compilation of the kernels)
        sync(device)
    times = [[] for _ in rows]
    for _ in range(repeats):  # interleaved rounds: a change of load hits every row alike
        for row, row_times in zip(rows, times):
            start = time.perf_counter()
            row["fn"]()
            sync(device)
            row_times.append(time.perf_counter() - start)
    base = statistics.median(times[0]) / n_prompts
    results = []
    for row, row_times in zip(rows, times):
        per_image = statistics.median(row_times) / n_prompts
        results.append(
            dict(
                op="self-correction",
                method=row["method"],
                kernels=row["kernels"],
                steps=steps,
                images=n_prompts,
                seconds_per_image=per_image,
                overhead_per_image=per_image - base,
                dtype=args.dtype,
            )
        )
    return results


# report ---------------------------------------------------------------------------------------------------------------
def print_tables(ceiling: dict, rows: list[dict], e2e: list[dict], args) -> None:
    print(
        f"\nceilings on {args.device} ({args.dtype}): {ceiling['gb_per_s']:.0f} GB/s (copy), "
        f"{ceiling['tflop_per_s']:.3g} TFLOP/s (matrix product)"
    )
    print("\n| op | case | B | pass | impl | ms | vs eager | GB/s | % BW | TFLOP/s | % FLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['op']} | {r['case']} | {r['batch']} | {r['pass_']} | {r['impl']} | {r['ms']:.3g} | "
            f"{r['speedup_vs_eager']:.2f}x | {r['gb_per_s']:.3g} | {100 * r['bandwidth_fraction']:.2g}% | "
            f"{r['tflop_per_s']:.3g} | {100 * r['flops_fraction']:.2g}% |"
        )
    if e2e:
        model = "the tiny pipeline (smoke)" if args.smoke else "an SD 1.5-sized pipeline"
        print(f"\nself-correction on {model}, {e2e[0]['steps']} steps, {e2e[0]['images']} image(s) per call")
        print("\n| method | kernels | s / image | overhead / image |\n|---|---|---|---|")
        for r in e2e:
            print(f"| {r['method']} | {r['kernels']} | {r['seconds_per_image']:.3f} | {r['overhead_per_image']:+.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="the features' and kernels' dtype")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the self-correction rows")
    parser.add_argument("--prompts", type=int, default=4, help="images per call of the self-correction rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-e2e", action="store_true", help="skip the self-correction rows")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, Triton interpreter: checks the script")
    parser.add_argument("--json", metavar="PATH", help="also write the results as a JSON list")
    args = parser.parse_args()
    if args.smoke:
        args.device = "cpu"
    elif args.device != "cuda" or not torch.cuda.is_available():
        parser.error(
            "the Triton kernels run on CUDA: pass --device cuda on a machine with a CUDA device (torch sees "
            f"{'one' if torch.cuda.is_available() else 'none'}), or --smoke to check this script on the CPU."
        )
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.prompts < 1:
        parser.error("--batch-sizes, --steps and --prompts must be at least 1.")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    start = time.perf_counter()
    ceiling = ceilings(device, dtype, args.smoke)
    rows = op_rows(args, device, dtype, ceiling)
    e2e = [] if args.no_e2e else self_correction_rows(args, device, dtype)
    print_tables(ceiling, rows, e2e, args)
    results = [dict(kind="ceiling", device=args.device, dtype=args.dtype, **ceiling), *rows, *e2e]
    finish(results, time.perf_counter() - start, load_seen or [0.0], device, args.json)


if __name__ == "__main__":
    main()
