"""Standing in for a module's `forward`, and putting it back: what the reuse recorder and region prompts share.

`Module.__call__` runs the module's hooks around an instance attribute `forward` as around its own, so a stand-in
sees what the pipeline passes and may call the forward it replaced (the module's own, or another wrapper's such as an
offloading hook's). Putting it back restores exactly what was there: the instance attribute, or none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["override_forward", "restore_forward"]


def override_forward(module: torch.nn.Module, forward: Callable) -> tuple[Callable, bool]:
    """Make `forward` stand in for `module.forward`; return the replaced forward and whether it was an instance
    attribute (both for `restore_forward`)."""
    shadowed, inner = "forward" in vars(module), module.forward
    module.forward = forward
    return inner, shadowed


def restore_forward(module: torch.nn.Module, inner: Callable, shadowed: bool) -> None:
    """Undo `override_forward`."""
    if shadowed:
        module.forward = inner
    else:
        del module.forward
