"""Where does the probing path spend its time? torch.profiler over early-exit UNet + adapter + ITM logits.

The path runs in three places, profiled as three modes on the same model and inputs:

- `score`: ITM scoring (`itm_score`): the early-exit UNet forward, the adapter and the ITM logits, without a graph.
- `train`: stage-1 probing: features from the frozen UNet without a graph, then the adapter and the ITM logits
  forward and the backward into the adapter's weights.
- `correct`: self-correction's plain gradient (and stage-2 tuning's path): the latent requires grad, the early-exit
  UNet keeps its graph, and the backward runs from the ITM logits through the adapter and the probed part of the UNet
  to the latent.
- `adapter`: the adapter's part of `correct` alone: the same features (computed beforehand, outside the timing),
  the adapter and the ITM logits forward, and the backward to the features.

Regions (their inclusive time) come from `record_function` ranges: the UNet up to the probed block, the adapter's
intake (`discadapt::intake`: 1x1 projection, resize, position and timestep embedding, the op of
`discadapt/kernels/intake.py`), its transformer encoder and decoder, the ITM logits (`discadapt::itm`), and the
backward. Operator time is the profiler's self time grouped by kind (convolution, matrix products, attention,
normalisation, elementwise, resize, copies). On CUDA the times are device times and the kernels are on by default
(`--reference`, or `DISCADAPT_KERNELS=0`, profiles the PyTorch references); on the CPU they are CPU times.

Models (random weights, built offline from `discadapt.testing.unet_config`; the adapter has its default size):

- `sd15`: Stable Diffusion 1.5's UNet, probing `up_blocks.1` (1280 channels at latent/2: 32x32 for 64x64 latents).
- `sdxl`: SDXL's UNet, probing `up_blocks.0` (1280 channels at latent/2: 64x64 for 128x128 latents). Building it
  takes about 10 GB of float32 weights and a minute or two on 2 CPU cores.

Each mode is timed (median of `--repeats` calls after one warm-up, no profiler), then profiled once.

Run:
    python benchmarks/profile_probe.py                                  # CPU: 32x32 latents, batch 2
    python benchmarks/profile_probe.py --models sd15 --modes score      # quick check
    python benchmarks/profile_probe.py --device cuda --dtype bfloat16 --batch-size 8 --json profile.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's discadapt, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, log, sync  # noqa: E402

from discadapt import DiscriminativeAdapter, FeatureProbe  # noqa: E402
from discadapt.testing import unet_config  # noqa: E402

MODELS = {
    "sd15": dict(config="sd15", layers=["up_blocks.1"], latent_size=64, text_dim=768),
    "sdxl": dict(config="sdxl", layers=["up_blocks.0"], latent_size=128, text_dim=1280),
}
MODES = ("score", "train", "correct", "adapter")
TIMESTEP = 500
TOKENS = 77
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
REGIONS = ("unet", "discadapt::intake", "adapter.encoder", "adapter.decoder", "discadapt::itm", "backward")
# operator kinds, by the first pattern found in the operator's name (lower case)
KINDS = (
    ("attention", ("scaled_dot_product", "flash", "efficient_attention", "_softmax", "softmax", "attention")),
    ("convolution", ("conv", "cudnn", "mkldnn_convolution")),
    ("matmul", ("addmm", "bmm", "matmul", "::mm", "linear", "gemm", "baddbmm")),
    ("normalisation", ("group_norm", "layer_norm", "native_norm", "batch_norm", "norm")),
    ("resize", ("adaptive_avg_pool", "upsample", "interpolate")),
    ("copy/cast", ("copy_", "::to", "_to_copy", "contiguous", "clone", "cat")),
    ("elementwise", ("add", "mul", "silu", "gelu", "sigmoid", "exp", "div", "sub", "fill", "where", "sum", "mean")),
)
load_seen: list[float] = []


def kind_of(name: str) -> str:
    lower = name.lower()
    if "triton" in lower or lower.startswith("discadapt"):
        return "triton kernels"
    for kind, patterns in KINDS:
        if any(p in lower for p in patterns):
            return kind
    return "other"


def region_hooks(adapter: DiscriminativeAdapter) -> list:
    """record_function ranges around the adapter's encoder and decoder (pre-hook enters, post-hook exits)."""
    handles = []
    for name in ("encoder", "decoder"):
        module = getattr(adapter, name)
        ranges: list = []

        def enter(_module, _args, ranges=ranges, label=f"adapter.{name}"):
            ranges.append(record_function(label))
            ranges[-1].__enter__()

        def leave(_module, _args, _output, ranges=ranges):
            ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def build(name: str, device: torch.device, dtype: torch.dtype):
    spec = MODELS[name]
    log(f"[{name}] building the UNet (random weights) ...")
    start = time.perf_counter()
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(unet_config(spec["config"])).eval().requires_grad_(False)
    unet.to(device=device, dtype=dtype)
    probe_info = FeatureProbe(unet, spec["layers"]).describe()
    adapter = DiscriminativeAdapter(
        layers=spec["layers"],
        in_channels=[probe_info[layer].channels for layer in spec["layers"]],
        text_dim=spec["text_dim"],
        token_dim=unet.config.cross_attention_dim,
    ).to(device)
    log(f"[{name}] built in {time.perf_counter() - start:.0f} s")
    return unet, adapter


def inputs(unet, batch: int, size: int, device, dtype, text_dim: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    config = unet.config
    kwargs = dict(
        sample=torch.randn(batch, config.in_channels, size, size, generator=generator).to(device, dtype),
        timestep=torch.full((batch,), TIMESTEP, device=device),
        encoder_hidden_states=torch.randn(batch, TOKENS, config.cross_attention_dim, generator=generator).to(
            device, dtype
        ),
    )
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, generator=generator).to(device, dtype),
            "time_ids": torch.tensor([size * 8, size * 8, 0, 0, size * 8, size * 8], device=device, dtype=dtype)
            .expand(batch, 6)
            .contiguous(),
        }
    text = torch.randn(batch, text_dim, generator=generator).to(device)
    return dict(unet=kwargs, text=text)


def step(mode: str, unet, adapter, layers, data, autocast_dtype) -> None:
    """One call of the probing path in `mode`."""
    kwargs = dict(data["unet"])
    device = kwargs["sample"].device
    if mode == "correct":
        kwargs["sample"] = kwargs["sample"].detach().requires_grad_(True)
    probe = FeatureProbe(unet, layers, detach=mode != "correct", early_exit=True)
    grad_ctx = torch.no_grad() if mode == "score" else torch.enable_grad()
    amp = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with grad_ctx:
        with amp:
            if mode == "adapter":
                if "features" not in data:
                    with torch.no_grad():
                        data["features"] = probe(**kwargs)
                feats = {name: f.detach().requires_grad_(True) for name, f in data["features"].items()}
            else:
                with record_function("unet"), torch.set_grad_enabled(mode == "correct"):
                    feats = probe(**kwargs)
            out = adapter(feats, kwargs["timestep"])
            logits = adapter.itm_logits(out, data["text"])
        if mode != "score":
            with record_function("backward"):
                if mode == "train":
                    logits.sum().backward()
                elif mode == "correct":
                    torch.autograd.grad(logits.sum(), kwargs["sample"])
                else:
                    torch.autograd.grad(logits.sum(), list(feats.values()))
    if mode == "train":
        adapter.zero_grad(set_to_none=True)


def profile_mode(mode, unet, adapter, layers, data, device, autocast_dtype, repeats: int) -> dict:
    def call():
        step(mode, unet, adapter, layers, data, autocast_dtype)
        sync(device)

    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        load_seen.append(os.getloadavg()[0])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    handles = region_hooks(adapter)
    try:
        with profile(activities=activities) as prof:
            call()
    finally:
        for handle in handles:
            handle.remove()
    cuda = device.type == "cuda"
    events = prof.key_averages()
    regions = {}
    for ev in events:
        if ev.key in REGIONS:
            regions[ev.key] = (ev.device_time_total if cuda else ev.cpu_time_total) / 1e3
    kinds: dict[str, float] = defaultdict(float)
    ops = []
    for ev in events:
        if ev.key in REGIONS or ev.key.startswith("ProfilerStep"):
            continue
        self_ms = (ev.self_device_time_total if cuda else ev.self_cpu_time_total) / 1e3
        if self_ms <= 0:
            continue
        kinds[kind_of(ev.key)] += self_ms
        ops.append((self_ms, ev.key, ev.count))
    total = sum(kinds.values())
    ops.sort(reverse=True)
    return dict(
        mode=mode,
        wall_ms=statistics.median(times) * 1e3,
        profiled_ms=total,
        regions_ms=regions,
        kinds_ms=dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        top_ops=[dict(op=name, self_ms=ms, calls=count) for ms, name, count in ops[:12]],
    )


def report(model: str, info: str, row: dict) -> None:
    total = row["profiled_ms"]
    print(f"\n### {model}, {row['mode']}: {row['wall_ms']:.1f} ms per call (wall, median); {info}")
    print("\n| region (inclusive) | ms | share |\n|---|---|---|")
    for name in REGIONS:
        if name in row["regions_ms"]:
            ms = row["regions_ms"][name]
            print(f"| {name} | {ms:.2f} | {100 * ms / total:.1f}% |")
    print("\n| operator kind (self time) | ms | share |\n|---|---|---|")
    for kind, ms in row["kinds_ms"].items():
        print(f"| {kind} | {ms:.2f} | {100 * ms / total:.1f}% |")
    print("\n| top operators (self time) | calls | ms | share |\n|---|---|---|---|")
    for op in row["top_ops"]:
        print(f"| `{op['op']}` | {op['calls']} | {op['self_ms']:.2f} | {100 * op['self_ms'] / total:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["sd15", "sdxl"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the UNet's weights and inputs")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], help="run the adapter under autocast")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--latent-size", type=int, help="default: 32 on the CPU, the model's own on CUDA")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per mode, after one warm-up; median")
    parser.add_argument("--reference", action="store_true", help="profile the PyTorch references (no kernels)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as a JSON list")
    args = parser.parse_args()
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be at least 1.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device.")
    if args.reference:
        os.environ["DISCADAPT_KERNELS"] = "0"
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    autocast_dtype = DTYPES[args.autocast] if args.autocast else None

    start = time.perf_counter()
    results = []
    for name in args.models:
        unet, adapter = build(name, device, dtype)
        size = args.latent_size or (32 if device.type == "cpu" else MODELS[name]["latent_size"])
        layers = MODELS[name]["layers"]
        shapes = FeatureProbe(unet, layers).describe(size, size)
        data = inputs(unet, args.batch_size, size, device, dtype, MODELS[name]["text_dim"])
        info = (
            f"{args.device}, UNet {args.dtype}, batch {args.batch_size}, latents {size}x{size}, "
            + ", ".join(f"{k} {v.channels}x{v.height}x{v.width}" for k, v in shapes.items())
            + (", reference ops" if args.reference or device.type == "cpu" else ", kernels on")
        )
        for mode in args.modes:
            log(f"[{name}] {mode} ...")
            row = profile_mode(mode, unet, adapter, layers, data, device, autocast_dtype, args.repeats)
            row.update(model=name, info=info)
            report(name, info, row)
            results.append(row)
        del unet, adapter
    finish(results, time.perf_counter() - start, load_seen or [0.0], device, args.json)


if __name__ == "__main__":
    main()
