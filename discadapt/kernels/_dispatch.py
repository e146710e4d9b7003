"""What every kernel file shares: the choice between a Triton kernel and its PyTorch reference, the compute
dtype under autocast, and the lazy import of triton.

A call takes the kernel when all of these hold, and the reference otherwise:
  - every tensor argument is on a CUDA device (the kernels are compiled to CUDA; the tests also run them on CPU
    tensors in the Triton interpreter, `TRITON_INTERPRET=1`, by calling the kernel entry points directly);
  - triton imports (it is the optional extra `pip install discadapt[kernels]`); it is imported at the first call on
    CUDA tensors (discadapt itself never imports it at import time);
  - the environment variable `DISCADAPT_KERNELS` is not `0` (read at every call, so it can be flipped at run time).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

__all__ = [
    "ENV_VAR",
    "compute_dtype",
    "import_triton",
    "interpreting",
    "kernels_enabled",
    "launch",
    "launch_device",
    "use_kernel",
]

ENV_VAR = "DISCADAPT_KERNELS"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KERNEL_DEVICES = ("cuda",)  # the tests add "cpu" to route the dispatchers through the Triton interpreter


def kernels_enabled() -> bool:
    """False when `DISCADAPT_KERNELS=0` (or `false`, `off`, `no`) forces the PyTorch references."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def interpreting() -> bool:
    """True when triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`, set before importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        import_triton()
    except ImportError:
        return False
    return True


def import_triton():
    """Import triton (lazily: `import discadapt` never does), or say which extra installs it."""
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "discadapt's Triton kernels need triton: pip install 'discadapt[kernels]' (or triton>=3.0). "
            f"Without it the PyTorch references run; set {ENV_VAR}=0 to choose them explicitly."
        ) from err
    return triton


def use_kernel(*tensors: torch.Tensor | None) -> bool:
    """Whether a call on these tensors (None entries ignored) takes the Triton kernel; see the module docstring."""
    if not all(t.device.type in _KERNEL_DEVICES for t in tensors if t is not None):
        return False
    return kernels_enabled() and _triton_available()


def compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a module of parameter dtype `dtype` computes in on `device`: the autocast dtype where autocast is
    enabled for the device's type (float64 is never autocast), else `dtype`."""
    device_type = device.type
    if dtype != torch.float64 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


def launch_device(tensor: torch.Tensor):
    """A context in which triton launches on `tensor`'s CUDA device (it launches on the current one), or a no-op."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


_UNPIPELINED: set = set()  # launch configurations that overflowed shared memory when pipelined


def launch(kernel, grid, on: torch.Tensor, *args, **constexprs) -> None:
    """`kernel[grid](*args, **constexprs)` on `on`'s device.

    A configuration whose software pipelining needs more shared memory than the device has (triton's
    `OutOfResources`, raised before anything runs) is launched again without it (`num_stages=1`), and every later
    launch of that configuration goes there directly. Measured for sm_90 by compiling with triton's ptxas: the
    intake's float32 (IEEE) backward over the 5 x 5 transposed taps of a 37 -> 29 bilinear resize needs 447 KB at the
    default 3 stages and 32 KB at one, against the H100 / H200's 227 KB; smaller GPUs have less (about 100 KB).
    """
    key = (getattr(kernel, "__name__", id(kernel)), tuple(sorted(constexprs.items())))
    key += tuple(str(a.dtype) for a in args if isinstance(a, torch.Tensor))
    with launch_device(on):
        if key not in _UNPIPELINED:
            from triton.runtime.errors import OutOfResources

            try:
                kernel[grid](*args, **constexprs)
                return
            except OutOfResources:
                _UNPIPELINED.add(key)
        kernel[grid](*args, num_stages=1, **constexprs)
