"""What every `discadapt` command line shares: argument types that check values, checks of output folders and
devices before any work, and one clean error line instead of a traceback.

- `Parser`: an `argparse.ArgumentParser` whose usage errors are one line, `discadapt <command>: error: ...`.
- `int_at_least(minimum)`, `number_at_least(minimum)`: argument types refusing values below `minimum` (and NaN or
  infinity) with a message naming the value and the fix.
- `check_output(path, flag)`: a folder to write, refused when it is a file, below a file, or not writable.
- `check_device(device, flag)`: a torch device that exists here (`--device cuda` without CUDA is refused).
- `run_command(args, name)`: calls `args.func(args)` after checking `args.out` / `args.dest` and `args.device`; any
  exception becomes one line `discadapt <name>: error: <what is wrong; the fix>` on stderr and exit code 2 (bad
  input: ValueError, OSError) or 1 (anything else), warnings one line each; with `args.debug` (`discadapt --debug
  ...`) exceptions and warnings are shown in full. A process group that `accelerate launch` opened ends with the
  command, so that no process aborts on its way out.

Example:
    >>> parser = Parser(prog="discadapt")
    >>> _ = parser.add_argument("--steps", type=int_at_least(1))
    >>> parser.parse_args(["--steps", "3"]).steps
    3
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path

__all__ = ["Parser", "check_device", "check_output", "int_at_least", "number_at_least", "run_command"]

OUTPUTS = {"out": "--out", "dest": "--dest"}  # attributes of parsed arguments that name a folder to write


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with one-line usage errors (its subparsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")


def int_at_least(minimum: int):
    """An argparse type: an int >= `minimum`, else an error naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; pass an int >= {minimum}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}; pass an int >= {minimum}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def number_at_least(minimum: float):
    """An argparse type: a finite number >= `minimum`, else an error naming the value."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass a finite number >= {minimum:g}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is not a finite number >= {minimum:g}; pass one, e.g. 7.5")
        return value

    parse.__name__ = f"number >= {minimum:g}"
    return parse


def check_output(path: str | os.PathLike, flag: str = "--out") -> Path:
    """`path` as a `Path` if it is a folder to write (existing or not), else a ValueError naming `flag`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"`{flag}` is {str(path)!r}, which is a file; pass a folder (it is created).")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"`{flag}` is {str(path)!r}, but {str(parent)!r} is a file; pass a path under a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"`{flag}` is {str(path)!r}, but {str(parent)!r} is not writable; pass a folder you can write to."
        )
    return path


def check_device(device: str, flag: str = "--device", fix: str = "pass --device cpu") -> str:
    """`device` if torch can use it here, else a ValueError naming `flag` (e.g. `cuda` on a machine without CUDA)
    and `fix`, what to do instead (a command sized for a GPU suggests a smaller run on the CPU)."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"`{flag}` is {device!r}, not a torch device; pass e.g. cpu, cuda or cuda:1.") from None
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if kind in available and not available[kind]():
        raise ValueError(f"`{flag}` is {device!r}, but torch finds no {kind.upper()} device on this machine; {fix}.")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ValueError(
            f"`{flag}` is {device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s); pass another."
        )
    return device


def _one_line(err: BaseException) -> str:
    """What is wrong, in one line: our messages as they are (they name the fix), others with their type."""
    from .sampling.checks import NonFiniteImageError

    message = " ".join(str(err).split()) or "(no message)"
    if type(err) in (ValueError, FileNotFoundError) or isinstance(err, NonFiniteImageError):
        return message
    return f"{type(err).__name__}: {message} (rerun with `discadapt --debug ...` to see where)"


def run_command(args: argparse.Namespace, name: str) -> int:
    """`args.func(args)` after the checks of the module docstring; its exit code, or 2 / 1 / 130 on an error."""
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = lambda message, *rest, **kw: print(
                f"discadapt {name}: warning: {' '.join(str(message).split())}", file=sys.stderr
            )
        try:
            for attribute, flag in OUTPUTS.items():
                if getattr(args, attribute, None) is not None:
                    check_output(getattr(args, attribute), flag)
            if getattr(args, "device", None) is not None:
                check_device(args.device, fix=getattr(args, "device_fix", None) or "pass --device cpu")
            return args.func(args)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"discadapt {name}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:
            if debug:
                raise
            print(f"discadapt {name}: error: {_one_line(err)}", file=sys.stderr)
            return 2 if isinstance(err, (ValueError, OSError)) else 1
        finally:
            _end_process_group()


def _end_process_group() -> None:
    """Destroy the default process group, if this command's process opened one (`accelerate launch`): left to the
    interpreter's exit, gloo's threads may be torn down still running, and the process aborts (SIGABRT)."""
    distributed = sys.modules.get("torch.distributed")  # not imported: no group to end
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
