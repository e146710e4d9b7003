"""Where the losses do their arithmetic: float32 at least, outside any autocast region.

Mixed-precision training hands the losses bfloat16 or float16 tensors, and an enclosing `torch.autocast` would
run their matrix products in half precision. Every loss here upcasts its inputs with `upcast` (float32, or
float64 for float64 inputs) inside `full_precision`, so a loss is the same number whatever the training
precision, and is returned in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["full_precision", "upcast"]


def upcast(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32, or float64 when it already is; an integer or bool tensor also becomes float32."""
    if not x.is_floating_point():
        return x.float()
    return x.to(torch.promote_types(x.dtype, torch.float32))


@contextlib.contextmanager
def full_precision(device: torch.device | str):
    """A region with autocast disabled on `device`'s type (a no-op where that type has no autocast)."""
    device_type = torch.device(device).type
    try:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        ctx = contextlib.nullcontext()
    with ctx:
        yield
