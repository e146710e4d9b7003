"""`discadapt bench compare A B`: paired differences between two runs' `results.json`, image by image.

Two runs of one suite (e.g. one pipeline and its retrained version, or one pipeline at two settings) draw image k
of a prompt with the same seed, so their verdicts and scores pair up by (prompt, seed). For each method both runs
hold (by name), and for the judge's accuracy and each metric both runs scored, `compare_runs` gives B minus A per
category, per pool and over all, with a 95% percentile-bootstrap interval that resamples prompts (or their groups,
`bench.Prompt.group`; `bench.stats`); images only one run drew are left out, and the table says how many pairs were
used. `pairs` compares methods of other names, also two methods of one run (`compare_runs(r, r, [("bundled",
"variant")])`).

Example:
    >>> for table in compare_runs("base-out/results.json", "tuned-out/results.json"):  # doctest: +SKIP
    ...     print(table.format())
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .report import Table
from .stats import paired_difference_ci

__all__ = ["compare_runs"]


def _load(path) -> dict:
    path = Path(os.fspath(path))
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file; pass the results.json of a `discadapt bench run`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}); pass a run's results.json.") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict) or "prompts" not in data:
        raise ValueError(f"{str(path)!r} has no `methods` and `prompts`; pass the results.json of a bench run.")
    return data


def _values(data: dict, method: str) -> dict:
    """`{(prompt text, seed): {"category", "group" (its bootstrap group: the prompt's group, else the prompt),
    "accuracy" (0 / 1, with a judge), metric name: score}}` of one method."""
    prompts, out = data["prompts"], {}
    for record in data["methods"][method]["images"]:
        prompt = prompts[record["prompt"]]
        group = f"group {prompt['group']}" if prompt.get("group") is not None else f"prompt {prompt['text']}"
        found = {"category": prompt["category"], "group": group, **record.get("scores", {})}
        if "ok" in record:
            found["accuracy"] = float(record["ok"])
        out[prompt["text"], prompt["seeds"][record["image"]]] = found
    return out


def _cell(interval) -> str:
    return f"{interval.estimate:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"


def compare_runs(
    a: str | os.PathLike, b: str | os.PathLike, pairs: Sequence[tuple[str, str]] | None = None
) -> list[Table]:
    """Tables of B minus A, one per measure (the judge's accuracy, each metric), a row per pair of methods.

    Args:
        a, b (str | PathLike): `results.json` files of two `bench run`s (or `discadapt demo`s) of one suite; the same
            file twice compares two of its methods.
        pairs (Sequence[tuple[str, str]], *optional*): `(method of A, method of B)` to compare, e.g.
            `[("bundled", "variant")]`; default every method both runs hold, each with itself.

    Returns:
        list[Table]: per measure, rows `[method (or "B_METHOD - A_METHOD"), pairs, category differences...,
        pools..., all]`, `+d [lo, hi]` each; pools (`Suite.pools`, e.g. the shapes suite's "multi-object") where A's
        results name them.

    Raises:
        ValueError: a file that is no run's results.json, a pair naming a method its run lacks, no method or measure
            the runs share, or no image both drew.
    """
    first, second = _load(a), _load(b)
    if pairs is None:
        pairs = [(m, m) for m in first["methods"] if m in second["methods"]]
        if not pairs:
            raise ValueError(
                f"the runs share no method ({list(first['methods'])} in {a}, {list(second['methods'])} in {b}); "
                "compare runs of the same methods, or name the pairs (`--pair A_METHOD:B_METHOD`)."
            )
    for method_a, method_b in pairs:
        for method, data, path in ((method_a, first, a), (method_b, second, b)):
            if method not in data["methods"]:
                raise ValueError(f"{path} has no method {method!r}; its methods are {list(data['methods'])}.")
    rows: dict[str, list] = {}
    categories = list(dict.fromkeys(p["category"] for p in first["prompts"]))
    pools = first.get("pools", {})
    for method_a, method_b in pairs:
        x, y = _values(first, method_a), _values(second, method_b)
        keys = [k for k in x if k in y]
        if not keys:
            raise ValueError(
                f"the runs share no image of {method_a!r} and {method_b!r} (same prompt and seed); compare runs of "
                "one suite."
            )
        measures = [m for m in x[keys[0]] if m not in ("category", "group") and m in y[keys[0]]]
        groups = np.unique([x[k]["group"] for k in keys], return_inverse=True)[1]  # the prompts' bootstrap groups
        cats = np.array([x[k]["category"] for k in keys])
        masks = [cats == c for c in categories] + [np.isin(cats, members) for members in pools.values()]
        masks.append(np.ones(len(keys), dtype=bool))
        label = method_a if method_a == method_b else f"{method_b} - {method_a}"
        for measure in measures:
            va = np.array([x[k][measure] for k in keys])
            vb = np.array([y[k][measure] for k in keys])
            binary = measure == "accuracy"
            cells = []
            for mask in masks:
                found = mask.any() and paired_difference_ci(vb[mask], va[mask], groups=groups[mask], binary=binary)
                cells.append(_cell(found) if found else "")
            rows.setdefault(measure, []).append([label, len(keys), *cells])
    if not rows:
        raise ValueError("the runs share no measure (accuracy or metric); compare runs scored the same way.")
    note = f"B ({b}) minus A ({a}), image by image (same prompt, same seed); prompts resampled, 95% interval"
    return [
        Table(f"{measure}: B - A [95% CI, paired]", ["method", "pairs", *categories, *pools, "all"], body, note)
        for measure, body in rows.items()
    ]
