"""What every benchmark here shares: logging to stderr, device sync, and the end of a run (load warning, JSON)."""

from __future__ import annotations

import json
import sys

import torch


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads in torch (None: torch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finish(results: list[dict], total: float, load_seen: list[float], device: torch.device, json_path: str | None):
    """Print the wall time, warn when other processes shared the CPU (load average above the torch threads), and
    write the results as JSON when asked."""
    print(f"\ntotal wall time: {total:.0f} s")
    if device.type == "cpu" and max(load_seen) > torch.get_num_threads() + 0.5:
        print(
            f"warning: load average reached {max(load_seen):.1f} with {torch.get_num_threads()} torch threads: "
            "other processes shared the CPU, so these timings are unreliable; rerun on an idle machine."
        )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {json_path}")
