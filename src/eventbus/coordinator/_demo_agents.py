"""The offline session behind ``eventbus demo``: deterministic agents, model and gates.

The planner plans a small Python package (``textkit``) as a task graph:
a scaffold, then per feature an implementation (coder), a test (tester) and
a review (reviewer), then the docs. Agents write real files through real
unified diffs and run real commands with the current interpreter. The
second implementation (the first, if there is only one) has a syntax error
on its first attempt, which its compile check catches (an ``error`` event),
so the task is retried (``task_retrying``) and fixed by a second diff; no
task fails for good, so there is no ``task_failed``.
The model client answers without a network, with token usage derived from
the request, so two runs use the same tokens.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike

import anyio.lowlevel

from .._bus import EventBus
from ._context import AgentContext
from ._control import HumanClarifier, HumanGate
from ._coordinator import SessionCoordinator, estimate_tokens
from ._instrument import ModelPrice
from ._patch import make_unified_diff
from ._session import (
    AgentResult,
    ClarificationRequest,
    CommandVerifier,
    GateCheck,
    GateResult,
    ModelRequest,
    ModelResponse,
    Plan,
    StaticRouter,
    TaskSpec,
)

__all__ = ["IDEA", "PRICES", "build_demo_coordinator", "demo_plan"]

IDEA = "textkit: a small Python package of text and number helpers, with tests and docs"

PRICES: Mapping[str, ModelPrice] = {
    "sim-large": ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3),
    "sim-small": ModelPrice(input_per_mtok=0.25, output_per_mtok=1.25),
}
ROUTER = StaticRouter("sim-small", {"planner": "sim-large", "reviewer": "sim-large"})
_SYSTEM = "You are one agent of an offline demo team. Answer briefly."


@dataclass(frozen=True)
class _Feature:
    name: str
    summary: str
    source: str
    checks: tuple[tuple[str, str], ...]


_FEATURES = (
    _Feature(
        "clamp",
        "Clamp a number into a range",
        "def clamp(value: float, low: float, high: float) -> float:\n"
        '    """Return value limited to [low, high]."""\n'
        "    if low > high:\n"
        '        raise ValueError("low must not exceed high")\n'
        "    return max(low, min(value, high))\n",
        (("clamp(5, 0, 3)", "3"), ("clamp(-1, 0, 3)", "0"), ("clamp(2, 0, 3)", "2")),
    ),
    _Feature(
        "slugify",
        "Make a URL slug of a title",
        "import re\n\n\n"
        "def slugify(text: str) -> str:\n"
        '    """Return a lowercase, dash-separated slug of text."""\n'
        '    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))\n',
        (
            ('slugify("Hello, World!")', '"hello-world"'),
            ('slugify("  Event  Bus ")', '"event-bus"'),
        ),
    ),
    _Feature(
        "word_count",
        "Count words case-insensitively",
        "def word_count(text: str) -> dict[str, int]:\n"
        '    """Count the words of text, case-insensitively."""\n'
        "    counts: dict[str, int] = {}\n"
        "    for word in text.lower().split():\n"
        "        counts[word] = counts.get(word, 0) + 1\n"
        "    return counts\n",
        (('word_count("a B a")', '{"a": 2, "b": 1}'), ('word_count("")', "{}")),
    ),
    _Feature(
        "is_palindrome",
        "Recognise palindromes",
        "def is_palindrome(text: str) -> bool:\n"
        '    """Whether text reads the same backwards, ignoring case and punctuation."""\n'
        "    letters = [char for char in text.lower() if char.isalnum()]\n"
        "    return letters == letters[::-1]\n",
        (
            ('is_palindrome("A man, a plan, a canal: Panama")', "True"),
            ('is_palindrome("bus")', "False"),
        ),
    ),
    _Feature(
        "fizzbuzz",
        "Say FizzBuzz",
        "def fizzbuzz(n: int) -> str:\n"
        '    """Fizz for multiples of 3, Buzz of 5, FizzBuzz of both, else the number."""\n'
        "    if n % 15 == 0:\n"
        '        return "FizzBuzz"\n'
        "    if n % 3 == 0:\n"
        '        return "Fizz"\n'
        "    if n % 5 == 0:\n"
        '        return "Buzz"\n'
        "    return str(n)\n",
        (("fizzbuzz(9)", '"Fizz"'), ("fizzbuzz(10)", '"Buzz"'), ("fizzbuzz(30)", '"FizzBuzz"')),
    ),
    _Feature(
        "mean",
        "Average a list of numbers",
        "def mean(values: list[float]) -> float:\n"
        '    """The arithmetic mean of values (which must not be empty)."""\n'
        "    if not values:\n"
        '        raise ValueError("mean of no values")\n'
        "    return sum(values) / len(values)\n",
        (("mean([1, 2, 3, 4])", "2.5"), ("mean([7])", "7.0")),
    ),
)

_README = (
    "# textkit\n\n"
    "Small helpers, written by offline agents through unified diffs.\n\n"
    "## Modules\n\n"
    "(none yet)\n"
)


def _module(index: int) -> tuple[str, _Feature]:
    feature = _FEATURES[index % len(_FEATURES)]
    cycle = index // len(_FEATURES)
    return (feature.name if cycle == 0 else f"{feature.name}_{cycle + 1}"), feature


def demo_plan(tasks: int) -> Plan:
    """The demo's plan with ``tasks`` tasks (at least 1): scaffold, features, docs."""
    if tasks < 1:
        raise ValueError(f"the demo needs at least 1 task, got {tasks}")
    graph = [
        TaskSpec(
            id="scaffold",
            role="coder",
            title="Scaffold the package",
            metadata={"kind": "scaffold"},
        )
    ]
    modules: list[str] = []
    features = 0
    while len(graph) < tasks - 1:
        module, feature = _module(features)
        impl = f"impl-{module}"
        steps = [
            TaskSpec(
                id=impl,
                role="coder",
                title=f"Implement {module}: {feature.summary.lower()}",
                depends_on=("scaffold",),
                metadata={"kind": "impl", "module": module, "feature": features},
            ),
            TaskSpec(
                id=f"test-{module}",
                role="tester",
                title=f"Test {module}",
                depends_on=(impl,),
                metadata={"kind": "test", "module": module, "feature": features},
            ),
            TaskSpec(
                id=f"review-{module}",
                role="reviewer",
                title=f"Review {module}",
                depends_on=(impl,),
                metadata={"kind": "review", "module": module, "feature": features},
            ),
        ]
        graph.extend(steps[: tasks - 1 - len(graph)])
        modules.append(module)
        features += 1
    if tasks > 1:
        graph.append(
            TaskSpec(
                id="docs",
                role="coder",
                title="Document the modules in the README",
                depends_on=tuple(task.id for task in graph if task.id != "scaffold")
                or ("scaffold",),
                metadata={"kind": "docs", "modules": modules},
            )
        )
    spec = {
        "package": "textkit",
        "modules": modules,
        "layout": {"code": "app/", "tests": "tests/", "docs": "README.md"},
        "verification": ["compileall", "unittest"],
    }
    return Plan(tasks=tuple(graph), spec=spec)


class OfflineModel:
    """A deterministic :class:`ModelClient`: no network; usage derived from the request.

    A system prompt counts as cached after its first use (as with prompt caching).
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self._seen_systems: set[str] = set()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer with a short deterministic text (after ``latency`` seconds)."""
        if self.latency:
            await anyio.sleep(self.latency)
        else:
            await anyio.lowlevel.checkpoint()
        digest = hashlib.sha256(f"{request.model}\n{request.prompt}".encode()).digest()
        words = ["ok", "done", "looks", "good", "plan", "diff", "test", "ship"]
        text = " ".join(words[byte % len(words)] for byte in digest[: 8 + digest[0] % 24])
        prompt = (
            request.prompt if request.system is None else request.system + "\n" + request.prompt
        )
        cached = None
        if request.system is not None:
            cached = estimate_tokens(request.system) if request.system in self._seen_systems else 0
            self._seen_systems.add(request.system)
        return ModelResponse(
            text=text,
            prompt_tokens=estimate_tokens(prompt),
            completion_tokens=24 + digest[1] % 200,
            cached_tokens=cached,
        )


class DemoClarifier:
    """Answers the planner's questions from a fixed table."""

    answers: Mapping[str, str] = {
        "Which Python version should the generated code target?": "3.11 or newer",
    }

    async def answer(self, request: ClarificationRequest) -> str:
        """The table's answer, or a neutral one."""
        await anyio.lowlevel.checkpoint()
        return self.answers.get(request.question, "no preference")


class DemoPlanner:
    """Plans ``tasks`` tasks after asking which Python version to target."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        """Return the plan."""
        await context.complete(f"Plan the work for: {context.idea}", system=_SYSTEM)
        python = await context.ask("Which Python version should the generated code target?")
        plan = demo_plan(self.tasks)
        return AgentResult(
            summary=f"planned {len(plan.tasks)} tasks",
            plan=Plan(tasks=plan.tasks, spec={**plan.spec, "python": python}),
        )


class DemoCoder:
    """Scaffolds, implements a feature (compile-checked) or writes the docs."""

    def __init__(self, *, run_commands: bool = True, flaky: str | None = None) -> None:
        self.run_commands = run_commands
        self.flaky = flaky

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        """Do the task through diffs."""
        await context.complete(f"Write the code for: {task.title}", system=_SYSTEM)
        kind = task.metadata["kind"]
        if kind == "scaffold":
            files = {
                "app/__init__.py": '"""textkit: small helpers written by the eventbus demo."""\n',
                "tests/__init__.py": '"""Tests of textkit."""\n',
                "README.md": _README,
            }
            for path, content in files.items():
                await context.apply_diff(make_unified_diff(path, context.read_text(path), content))
            return AgentResult(summary=f"created {len(files)} files")
        if kind == "docs":
            readme = context.read_text("README.md") or _README
            listing = "".join(
                f"- `app/{module}.py`: {_module(index)[1].summary}\n"
                for index, module in enumerate(task.metadata["modules"])
            )
            await context.apply_diff(
                make_unified_diff(
                    "README.md", readme, readme.replace("(none yet)\n", listing or "-\n")
                )
            )
            return AgentResult(summary="documented the modules")
        module = task.metadata["module"]
        source = _module(task.metadata["feature"])[1].source
        if task.id == self.flaky and context.attempt == 1:
            source = source.replace(":\n", "\n", 1)  # a typo: the def line's colon
        path = f"app/{module}.py"
        await context.apply_diff(make_unified_diff(path, context.read_text(path), source))
        if self.run_commands:
            await context.run_command([sys.executable, "-m", "py_compile", path])
        else:
            compile(source, path, "exec")
        return AgentResult(summary=f"wrote {path}")


class DemoTester:
    """Writes a unittest module for a feature and runs it."""

    def __init__(self, *, run_commands: bool = True) -> None:
        self.run_commands = run_commands

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        """Write ``tests/test_{module}.py`` and run it."""
        module = task.metadata["module"]
        feature = _module(task.metadata["feature"])[1]
        await context.complete(f"Write tests for {module}", system=_SYSTEM)
        checks = "".join(
            f"        self.assertEqual({call}, {expected})\n" for call, expected in feature.checks
        )
        test = (
            "import unittest\n\n"
            f"from app.{module} import {feature.name}\n\n\n"
            f"class Test{feature.name.title().replace('_', '')}(unittest.TestCase):\n"
            "    def test_examples(self) -> None:\n"
            f"{checks}\n\n"
            'if __name__ == "__main__":\n'
            "    unittest.main()\n"
        )
        path = f"tests/test_{module}.py"
        await context.apply_diff(make_unified_diff(path, context.read_text(path), test))
        if self.run_commands:
            await context.run_command(
                [sys.executable, "-m", "unittest", "-q", f"tests.test_{module}"]
            )
        return AgentResult(summary=f"{len(feature.checks)} checks in {path}")


class DemoReviewer:
    """Reviews a module and records the review as an artifact."""

    async def run(self, task: TaskSpec, context: AgentContext) -> AgentResult:
        """Save ``review-{module}``."""
        module = task.metadata["module"]
        source = context.read_text(f"app/{module}.py") or ""
        await context.complete(f"Review this module:\n{source}", system=_SYSTEM)
        notes = [
            "has a docstring" if '"""' in source else "missing a docstring",
            "type hints present" if "->" in source else "missing type hints",
        ]
        await context.save_artifact(
            f"review-{module}",
            {"module": module, "verdict": "approved", "lines": source.count("\n"), "notes": notes},
        )
        return AgentResult(summary="approved")


class ScopeGate:
    """Blocks diffs that touch files outside ``app/``, ``tests/`` and ``README.md``."""

    name = "scope"
    allowed = ("app/", "tests/", "README.md")

    async def evaluate(self, check: GateCheck) -> GateResult:
        """Block stray paths."""
        if check.stage != "diff" or check.diff is None:
            return GateResult(reason="plan in scope")
        stray = [
            line[6:].strip()
            for line in check.diff.splitlines()
            if line.startswith("+++ b/") and not line[6:].startswith(self.allowed)
        ]
        if stray:
            return GateResult(decision="block", reason=f"outside the project: {', '.join(stray)}")
        return GateResult(reason="paths in scope")


class TestsPlannedGate:
    """Warns when the plan implements a module without testing it."""

    name = "tests-planned"

    async def evaluate(self, check: GateCheck) -> GateResult:
        """Check the plan; diffs pass."""
        if check.stage != "plan" or check.plan is None:
            return GateResult(reason="not a plan")
        ids = {task.id for task in check.plan.tasks}
        untested = [
            task.metadata["module"]
            for task in check.plan.tasks
            if task.metadata.get("kind") == "impl" and f"test-{task.metadata['module']}" not in ids
        ]
        if untested:
            return GateResult(decision="warn", reason=f"no test task for {', '.join(untested)}")
        return GateResult(reason="every module has a test task")


class DiffSizeGate:
    """Warns about diffs adding more than ``max_lines`` lines."""

    name = "diff-size"

    def __init__(self, max_lines: int = 12) -> None:
        self.max_lines = max_lines

    async def evaluate(self, check: GateCheck) -> GateResult:
        """Count added lines."""
        if check.diff is None:
            return GateResult(reason="no diff")
        added = sum(
            1
            for line in check.diff.splitlines()
            if line.startswith("+") and not line.startswith("+++")
        )
        if added > self.max_lines:
            return GateResult(decision="warn", reason=f"{added} lines added (> {self.max_lines})")
        return GateResult(reason=f"{added} lines added")


def _flaky_task(plan: Plan) -> str | None:
    impls = [task.id for task in plan.tasks if task.metadata.get("kind") == "impl"]
    return impls[1] if len(impls) > 1 else (impls[0] if impls else None)


def build_demo_coordinator(
    bus: EventBus,
    workspace_root: str | PathLike[str],
    *,
    tasks: int = 8,
    max_concurrency: int = 4,
    run_commands: bool = True,
    pace: float = 0.0,
    human: bool = False,
    verify_command: Sequence[str] | None = None,
    control: str | PathLike[str] | None = None,
) -> SessionCoordinator:
    """The demo's coordinator on ``bus``: offline agents, model, gates and verifiers.

    With ``run_commands=False`` no process is started (agents check code
    in-process and there are no verifiers): what is left is coordination.
    ``pace`` is how long each model call takes, in seconds. With ``human``,
    the planner's question and the plan's approval wait for a person (a
    :class:`HumanClarifier` and a :class:`HumanGate`). ``verify_command``
    replaces the verification commands. ``control``: the workspace root whose
    inbox the coordinator reads (see :class:`SessionCoordinator`).
    """
    plan = demo_plan(tasks)
    verifiers: list[CommandVerifier] = []
    if verify_command is not None:
        verifiers = [CommandVerifier("verify", verify_command)]
    elif run_commands:
        verifiers = [CommandVerifier("compile", [sys.executable, "-m", "compileall", "-q", "."])]
        if any(task.role == "tester" for task in plan.tasks):
            verifiers.append(
                CommandVerifier(
                    "unit tests",
                    [sys.executable, "-m", "unittest", "discover", "-q", "-s", "tests", "-t", "."],
                )
            )
    return SessionCoordinator(
        bus,
        workspace_root=workspace_root,
        agents={
            "planner": DemoPlanner(tasks),
            "coder": DemoCoder(run_commands=run_commands, flaky=_flaky_task(plan)),
            "tester": DemoTester(run_commands=run_commands),
            "reviewer": DemoReviewer(),
        },
        model_client=OfflineModel(pace),
        router=ROUTER,
        gates=[ScopeGate(), TestsPlannedGate(), DiffSizeGate(), *([HumanGate()] if human else [])],
        verifiers=verifiers,
        clarifier=HumanClarifier() if human else DemoClarifier(),
        prices=PRICES,
        max_concurrency=max_concurrency,
        control=control,
    )
