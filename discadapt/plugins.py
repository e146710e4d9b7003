"""Plug-ins: how a package outside discadapt's core (a synthetic world, a model family) adds to the command line
and to training, without the core importing it.

A plug-in is a function `register(registry: Registry)` named by an entry point of the group "discadapt.plugins",
e.g. in setup.cfg:

    [options.entry_points]
    discadapt.plugins =
        shapes = discadapt.worlds.shapes.plugin:register

What it may register:

- pipeline sources (`add_source`): a flag such as `--world` beside `--pipeline DIR` and `--tiny` on every command
  that loads a pipeline, and the function that loads it;
- commands (`add_command`): a function `add(subparsers)` that adds subcommands (e.g. `demo`, `world train`);
- training data (`add_training_data`): flags of `discadapt probe` / `tune`, the datasets they select, and
  evaluation sets run on the trained adapter;
- scorers (`add_scorer`): a named factory of a `scorers.Scorer` (e.g. a world's CLIP);
- judges (`add_judge`): a named factory of a `scorers.Judge` (e.g. a world's oracle), for evaluation only;
- suites (`add_suite`): a named factory of a `bench.Suite` (prompts, seeds, a judge), run by `bench.run_suite`;
- runners (`add_runner`): `discadapt bench run --suite NAME [options]` for a suite that brings its own methods and
  tables (the shapes world's demo).

`registry()` loads every installed plug-in once. The shapes world registers itself this way: nothing in the core
imports `discadapt.worlds` (a test walks the imports).

Example:
    >>> from discadapt.plugins import registry
    >>> sorted(registry().sources)  # the shapes world's `--world` and `--world-tuned`
    ['world', 'world-tuned']
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points

__all__ = [
    "GROUP",
    "PipelineSource",
    "Registry",
    "TrainingData",
    "add_pipeline_arguments",
    "pipeline_from_args",
    "registry",
]

GROUP = "discadapt.plugins"


@dataclass(frozen=True)
class PipelineSource:
    """A pipeline a flag selects.

    Attributes:
        help (str): the flag's help text.
        load (Callable[[], DiffusionPipeline]): loads the pipeline (offline).
    """

    help: str
    load: Callable[[], object]


@dataclass(frozen=True)
class TrainingData:
    """Data a plug-in adds to `discadapt probe` and `discadapt tune`.

    Attributes:
        add_arguments (Callable[[argparse._ArgumentGroup], None]): adds its flags to the "data" group.
        datasets (Callable[[argparse.Namespace, list], list]): given the parsed arguments and the datasets the
            other flags selected so far, the datasets to add (map-style, items of `discadapt.train.data`).
        eval_datasets (Callable[[argparse.Namespace], Mapping[str, object]]): named datasets on which the trained
            adapter is evaluated at the end (`train.evaluate_adapter`); empty for none.
    """

    add_arguments: Callable[[argparse._ArgumentGroup], None]
    datasets: Callable[[argparse.Namespace, list], list]
    eval_datasets: Callable[[argparse.Namespace], Mapping[str, object]] = lambda args: {}


@dataclass
class Registry:
    """What the installed plug-ins registered (see the module docstring)."""

    sources: dict[str, PipelineSource] = field(default_factory=dict)
    commands: list[Callable[[object], None]] = field(default_factory=list)
    training_data: list[TrainingData] = field(default_factory=list)
    scorers: dict[str, Callable[..., object]] = field(default_factory=dict)
    judges: dict[str, Callable[..., object]] = field(default_factory=dict)
    suites: dict[str, Callable[..., object]] = field(default_factory=dict)
    runners: dict[str, Callable[[list[str]], int]] = field(default_factory=dict)

    def add_source(self, name: str, help: str, load: Callable[[], object]) -> None:
        """Register the flag `--{name}` selecting the pipeline `load()` returns."""
        if name in self.sources or name in ("pipeline", "tiny"):
            raise ValueError(f"pipeline source {name!r} is registered twice; pick another name.")
        self.sources[name] = PipelineSource(help, load)

    def add_command(self, add: Callable[[object], None]) -> None:
        """Register `add(subparsers)`, called on the `discadapt` parser's subparsers."""
        self.commands.append(add)

    def add_training_data(self, data: TrainingData) -> None:
        """Register flags and datasets of `discadapt probe` / `tune`."""
        self.training_data.append(data)

    def _add_named(self, kind: str, table: dict, name: str, factory: Callable[..., object]) -> None:
        if not isinstance(name, str) or not name or name in table:
            raise ValueError(f"{kind} {name!r} is registered twice or unnamed; pick another, non-empty name.")
        if not callable(factory):
            raise ValueError(f"the factory of {kind} {name!r} is {factory!r}; pass a function returning the {kind}.")
        table[name] = factory

    def add_scorer(self, name: str, factory: Callable[..., object]) -> None:
        """Register `factory(**options) -> scorers.Scorer` under `name` (e.g. "world CLIP")."""
        self._add_named("scorer", self.scorers, name, factory)

    def add_judge(self, name: str, factory: Callable[..., object]) -> None:
        """Register `factory(**options) -> scorers.Judge` under `name` (e.g. a world's oracle; evaluation only)."""
        self._add_named("judge", self.judges, name, factory)

    def add_suite(self, name: str, factory: Callable[..., object]) -> None:
        """Register `factory(**options) -> bench.Suite` under `name` (e.g. "shapes")."""
        self._add_named("suite", self.suites, name, factory)

    def add_runner(self, name: str, run: Callable[[list[str]], int]) -> None:
        """Register `run(argv) -> exit code` as `discadapt bench run --suite {name} [options]`: a suite that brings
        its own methods and tables (the shapes world: `discadapt demo`, whose options `argv` are)."""
        self._add_named("runner", self.runners, name, run)


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The registry filled by every installed plug-in (entry points of group `GROUP`), loaded once."""
    found = Registry()
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        entry.load()(found)
    return found


def add_pipeline_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The pipeline a command runs on, one of: `--pipeline DIR`, `--tiny`, or a plug-in's flag (`--world`); with
    `required=False` the command checks that one was given where it needs one."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--pipeline", help="local diffusers pipeline folder (loaded offline)")
    source.add_argument("--tiny", action="store_true", help="the tiny random test pipeline")
    for name, found in registry().sources.items():
        source.add_argument(f"--{name}", action="store_true", help=found.help)


def source_name(args: argparse.Namespace) -> str | None:
    """The flag `add_pipeline_arguments` saw without its dashes ("tiny", "world", ...), or None (`--pipeline DIR`, or
    nothing given)."""
    return next((n for n in ("tiny", *registry().sources) if getattr(args, n.replace("-", "_"), False)), None)


def pipeline_from_args(args: argparse.Namespace):
    """The pipeline `add_pipeline_arguments`' flags selected, loaded offline.

    Raises:
        ValueError: `--pipeline` is not a pipeline folder, or holds pickled weights only (`loading.load_pipeline`).
    """
    name = source_name(args)
    if name == "tiny":
        from .testing import tiny_sd_pipeline

        return tiny_sd_pipeline()
    if name is not None:
        return registry().sources[name].load()
    from .loading import load_pipeline

    return load_pipeline(args.pipeline, "--pipeline")
