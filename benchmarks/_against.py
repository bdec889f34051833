"""Comparing two source trees: one ratio per process, processes alternating between trees."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def ratios_by_tree(
    script: str, tree: Path, arguments: Sequence[str], repeats: int
) -> dict[str, list[float]]:
    """Run ``script --one-ratio ARGUMENTS`` ``repeats`` times with this tree's ``src`` and
    with ``tree``'s, alternating which goes first; each run prints one JSON number."""
    here = Path(script).resolve().parent
    trees = {"this tree": here.parent, os.fspath(tree): tree}
    ratios: dict[str, list[float]] = {name: [] for name in trees}
    for repeat in range(repeats):
        order = list(trees.items()) if repeat % 2 == 0 else list(trees.items())[::-1]
        for name, root in order:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(root / "src"), str(here)]),
                "PYTHONHASHSEED": "0",  # dict layouts alike in every process
            }
            command = [sys.executable, script, "--one-ratio", *arguments]
            result = subprocess.run(command, env=env, capture_output=True, check=True)
            ratios[name].append(json.loads(result.stdout))
    return ratios


def print_ratios(ratios: dict[str, list[float]]) -> None:
    """A line per tree: the median, lowest and highest ratio."""
    print(f"{'source tree':<44}{'median':>8}{'min':>8}{'max':>8}")
    for name, values in ratios.items():
        print(f"{name:<44}{statistics.median(values):>8.3f}{min(values):>8.3f}{max(values):>8.3f}")
