"""Enforces DESIGN.md's layer rules with stdlib `ast`: no new dependency.

Every .py under gateway/ and trainer/ is parsed; every import is collected (module level and inside functions,
`import x`, `from x import y`, relative imports resolved, and `importlib.import_module("x")` with a literal name).
One rule per package; every project module falls under at least one rule; the module graph has no cycle; no
private name (`_x`) is imported from another module. Imports under `if TYPE_CHECKING:` run never: they count for
the rules but not for cycles.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("gateway", "trainer")  # top-level packages of this project: a closed world


@dataclass(frozen=True)
class Rule:
    """Files matching a `scope` pattern (minus `exclude`) may import the project modules in `may` and
    must not import the modules in `must_not`. Names match themselves and their submodules;
    the longest matching name decides. A project module that matches nothing is forbidden
    when `may` is a closed list (`any_project=False`). Patterns are fnmatch's: `*` crosses `/`."""

    name: str
    scope: tuple[str, ...]
    may: tuple[str, ...]
    must_not: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    any_project: bool = False


WEB = ("starlette", "httpx", "litellm")
ML = ("torch", "transformers", "trainer")
ROOT_VOCABULARY = (
    "gateway.formats", "gateway.protocol", "gateway.config", "gateway.errors", "gateway.metrics", "gateway.http1"
)  # fmt: skip
RULES = (
    Rule(
        "formats imports nothing of the project but itself, and no web or torch stack",
        ("gateway/formats/*",),
        may=("gateway.formats",),
        must_not=(*WEB, "torch", "transformers"),
    ),
    Rule(
        "the root vocabulary (protocol, config, errors, metrics, the http1 client) imports only itself and formats",
        ("gateway/protocol/*", "gateway/config.py", "gateway/errors.py", "gateway/metrics.py", "gateway/http1.py"),
        may=ROOT_VOCABULARY,
        must_not=(*WEB, *ML),
    ),
    Rule(
        "store imports nothing above it: only formats, protocol, errors and itself",
        ("gateway/store/*",),
        may=("gateway.store", "gateway.formats", "gateway.protocol", "gateway.errors"),
        must_not=(*WEB, *ML),
    ),
    Rule(
        "upstream knows nothing of criteria, the store, the services or HTTP serving",
        ("gateway/upstream/*",),
        may=("gateway.upstream", *ROOT_VOCABULARY),
        must_not=("starlette", *ML),
    ),
    Rule(
        "criteria import only themselves, the root vocabulary and the reward server's wire protocol",
        ("gateway/criteria/*",),
        may=("gateway.criteria", *ROOT_VOCABULARY, "gateway.reward_serving.protocol"),
        must_not=("starlette", "litellm", *ML),
    ),
    Rule(
        "services import neither starlette nor the API",
        ("gateway/service/*",),
        may=(
            "gateway.service",
            *ROOT_VOCABULARY,
            "gateway.store",
            "gateway.upstream",
            "gateway.criteria",
            "gateway.reward_serving.protocol",
        ),
        must_not=("starlette", *ML),
    ),
    Rule(
        "the API and the app may import every layer below, but no torch, trainer or reward_serving internals",
        ("gateway/api/*",),
        may=("gateway", "gateway.reward_serving.protocol"),
        must_not=(*ML, "gateway.reward_serving", "gateway.cli"),
        any_project=True,
    ),
    Rule(
        "the app (proxy.py) mounts the API and nothing else",
        ("gateway/proxy.py",),
        may=("gateway.api", *ROOT_VOCABULARY),
        must_not=(*ML, "gateway.reward_serving", "gateway.cli"),
    ),
    Rule(
        "the composition root (cli.py, __main__.py) may wire everything, but imports no torch at module level",
        ("gateway/cli.py", "gateway/__main__.py", "gateway/__init__.py"),
        may=("gateway",),
        must_not=("trainer",),
        any_project=True,
    ),
    Rule(
        "reward_serving imports only itself and formats, never gateway web code",
        ("gateway/reward_serving/*",),
        may=("gateway.reward_serving", "gateway.formats"),
        must_not=(
            "gateway.proxy",
            "gateway.api",
            "gateway.service",
            "gateway.criteria",
            "gateway.config",
            "gateway.errors",
            "gateway.metrics",
        ),
    ),
    Rule(
        "trainer imports only gateway.formats (and itself), no web stack",
        ("trainer/*",),
        may=("trainer", "gateway.formats"),
        must_not=WEB,
    ),
)
# Nothing at import: LiteLLM takes seconds to import, so it is only ever imported inside functions.
NEVER_AT_MODULE_LEVEL = ("litellm",)


# ---------------------------------------------------------------- the checker


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    lineno: int
    top_level: bool  # runs at import time (not inside a function, not under `if TYPE_CHECKING:`)
    runs: bool = True  # False under `if TYPE_CHECKING:`: never executed
    names: tuple[str, ...] = ()  # what `from x import a, b` takes from x


def module_name(relpath: str) -> tuple[str, bool]:
    """'gateway/criteria/base.py' -> ('gateway.criteria.base', False); packages -> (name, True)."""
    parts = relpath.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_project_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def collect_imports(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import in `source`, with relative imports resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool, runs: bool = True) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            top_level = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False, False)
            for child in node.orelse:
                visit(child, top_level, runs)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, top_level, runs) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                # `from gateway import formats` imports the module gateway.formats; `from x import name`
                # imports x. Only project names can be checked on disk, and only they need to be.
                is_sub = alias.name != "*" and sub.split(".")[0] in PROJECT and _is_project_module(sub)
                found.append(
                    Import(sub if is_sub else base, node.lineno, top_level, runs, () if is_sub else (alias.name,))
                )
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            if called in ("import_module", "__import__") and args and isinstance(args[0], ast.Constant):
                name = args[0].value
                if isinstance(name, str) and not name.startswith("."):
                    found.append(Import(name, node.lineno, top_level, runs))
        for child in ast.iter_child_nodes(node):
            visit(child, top_level, runs)

    visit(ast.parse(source), True)
    return found


def _matches(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def rule_violations(rule: Rule, imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        allowed = [n for n in rule.may if _matches(imp.module, n)]
        denied = [n for n in rule.must_not if _matches(imp.module, n)]
        best_allowed = max(map(len, allowed), default=-1)
        best_denied = max(map(len, denied), default=-1)
        if best_denied > best_allowed:
            out.append(f"line {imp.lineno}: imports {imp.module} (must not import {max(denied, key=len)})")
        elif best_allowed < 0 and imp.module.split(".")[0] in PROJECT and not rule.any_project:
            out.append(
                f"line {imp.lineno}: imports {imp.module} (may import from the project only: "
                f"{', '.join(rule.may) or 'nothing'})"
            )
    return out


def module_level_violations(imports: list[Import]) -> list[str]:
    return [
        f"line {imp.lineno}: imports {imp.module} at module level (import it inside the function)"
        for imp in imports
        if imp.top_level and any(_matches(imp.module, n) for n in NEVER_AT_MODULE_LEVEL)
    ]


def in_scope(rule: Rule, relpath: str) -> bool:
    return any(fnmatch(relpath, x) for x in rule.scope) and not any(fnmatch(relpath, x) for x in rule.exclude)


def project_files() -> list[str]:
    files = []
    for top in PROJECT:
        files.extend(p.relative_to(ROOT).as_posix() for p in (ROOT / top).rglob("*.py"))
    return sorted(f for f in files if "__pycache__" not in f)


def imports_of(relpath: str) -> list[Import]:
    module, is_package = module_name(relpath)
    return collect_imports((ROOT / relpath).read_text(encoding="utf-8"), module, is_package)


# ---------------------------------------------------------------- the rules, on the real tree


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_import_rule(rule: Rule) -> None:
    problems = [
        f"{relpath} {problem}"
        for relpath in project_files()
        if in_scope(rule, relpath)
        for problem in rule_violations(rule, imports_of(relpath))
    ]
    assert not problems, f"{rule.name}:\n" + "\n".join(problems)


def test_nothing_at_import_litellm_is_imported_lazily() -> None:
    problems = [
        f"{relpath} {problem}"
        for relpath in project_files()
        for problem in module_level_violations(imports_of(relpath))
    ]
    assert not problems, "\n".join(problems)


def test_every_project_module_falls_under_a_rule() -> None:
    uncovered = [relpath for relpath in project_files() if not any(in_scope(rule, relpath) for rule in RULES)]
    assert not uncovered, f"modules no rule covers (add them to a rule): {uncovered}"


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports at run time (submodules named as such)."""
    modules = {module_name(relpath)[0]: relpath for relpath in project_files()}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, relpath in modules.items():
        for imp in imports_of(relpath):
            if imp.runs and imp.module in modules and imp.module != name:
                graph[name].add(imp.module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of names (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := walk(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)) is not None:
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_private_name_is_imported_from_another_module() -> None:
    problems = [
        f"{relpath} line {imp.lineno}: imports {name} from {imp.module}"
        for relpath in project_files()
        for imp in imports_of(relpath)
        if imp.module.split(".")[0] in PROJECT
        for name in imp.names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not problems, "\n".join(problems)


def test_the_cycle_and_private_name_checks_can_fail() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    imports = collect_imports("from gateway.store.records import _utc, format_time\n", "gateway.x", False)
    assert [imp.names for imp in imports] == [("_utc",), ("format_time",)]
    lazy = collect_imports("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n", "gateway.y", False)
    assert [imp.runs for imp in lazy if imp.module == "x"] == [False]


# ---------------------------------------------------------------- the checker can fail


def _check(relpath: str, source: str) -> list[str]:
    module, is_package = module_name(relpath)
    imports = collect_imports(source, module, is_package)
    problems = [p for rule in RULES if in_scope(rule, relpath) for p in rule_violations(rule, imports)]
    return list(dict.fromkeys(problems + module_level_violations(imports)))  # one line per problem


def test_checker_catches_forbidden_imports_in_synthetic_sources() -> None:
    # A lazy torch import inside a function is still an import of formats.py.
    assert _check("gateway/formats/pairs.py", "def f():\n    import torch\n") == [
        "line 2: imports torch (must not import torch)"
    ]
    assert _check("gateway/formats/pairs.py", "from gateway import protocol\n")
    assert _check("gateway/formats/rendering.py", "from gateway.store import LogRecord\n")
    assert _check("gateway/protocol/resources.py", "from gateway.store import LogRecord\n")
    # Relative imports are resolved: gateway.criteria.foo -> gateway.proxy.
    assert _check("gateway/criteria/foo.py", "from ..proxy import create_app\n")
    assert _check("gateway/criteria/foo.py", "from .. import store\n")
    assert _check("gateway/criteria/foo.py", "from ..upstream.router import Router\n")
    assert _check("gateway/criteria/foo.py", "from starlette.responses import JSONResponse\n")
    assert _check("gateway/store/core.py", "from gateway.criteria import CriterionDefinition\n")
    assert _check("gateway/store/core.py", "from ..service.chat import ChatService\n")
    assert _check("gateway/upstream/router.py", "from gateway.criteria import Criterion\n")
    assert _check("gateway/upstream/router.py", "from gateway.store import LogStore\n")
    assert _check("gateway/service/chat.py", "from starlette.responses import JSONResponse\n")
    assert _check("gateway/service/chat.py", "from gateway.api import Services\n")
    assert _check("gateway/api/chat.py", "from gateway.reward_serving.engine import TorchRewardEngine\n")
    assert _check("gateway/api/chat.py", "import torch\n")
    assert _check("gateway/proxy.py", "from gateway.service.chat import ChatService\n")
    assert _check("gateway/proxy.py", "from trainer.train import train\n")
    assert _check("gateway/reward_serving/server.py", "from gateway.errors import GatewayError\n")
    assert _check("gateway/reward_serving/server.py", "from ..metrics import REQUESTS\n")
    assert _check("trainer/train.py", "import httpx\n")
    assert _check("trainer/train.py", "from gateway.proxy import create_app\n")
    assert _check("trainer/train.py", "import importlib\nimportlib.import_module('litellm')\n")
    assert _check("gateway/upstream/providers.py", "import litellm\n") == [
        "line 1: imports litellm at module level (import it inside the function)"
    ]
    assert _check("gateway/upstream/providers.py", "try:\n    import litellm\nexcept ImportError:\n    pass\n")


def test_checker_accepts_what_the_rules_allow() -> None:
    assert _check("gateway/formats/pairs.py", "import gzip\nimport json\nfrom typing import Any\n") == []
    assert _check("gateway/metrics.py", "from prometheus_client import Counter\n") == []
    rules_source = "from .base import Criterion\nfrom gateway import formats\nfrom ..protocol import ChatCompletion\n"
    assert _check("gateway/criteria/rules.py", rules_source) == []
    reward_model = "import httpx\nfrom gateway.reward_serving.protocol import ScoreRequest\n"
    assert _check("gateway/criteria/reward_model.py", reward_model) == []
    assert _check("gateway/criteria/__init__.py", "from . import reward_model, rules\n") == []
    assert (
        _check("gateway/store/core.py", "from gateway.protocol import CriterionDefinition\nfrom .ids import new_id\n")
        == []
    )
    assert _check("gateway/upstream/router.py", "from gateway.upstream.providers import ChatProvider\n") == []
    service = "from gateway.store import LogStore\nfrom gateway.upstream import router\nfrom gateway import criteria\n"
    assert _check("gateway/service/chat.py", service) == []
    assert (
        _check(
            "gateway/api/chat.py",
            "from gateway.service.chat import ChatService\nfrom starlette.responses import Response\n",
        )
        == []
    )
    assert _check("gateway/api/chat.py", "from gateway.reward_serving.protocol import ScoreRequest\n") == []
    assert _check("gateway/proxy.py", "from gateway.api import chat\nfrom .config import GatewaySettings\n") == []
    assert _check("gateway/cli.py", "from gateway.reward_serving.server import create_app\n") == []
    engine = "import torch\nfrom .batcher import Batcher\nfrom ..formats import render_responses\n"
    assert _check("gateway/reward_serving/engine.py", engine) == []
    trainer = "import torch\nfrom trainer.config import Config\nfrom gateway.formats import load_pairs\n"
    assert _check("trainer/train.py", trainer) == []
    assert _check("gateway/upstream/providers.py", "def call():\n    import litellm\n") == []
    lazy = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import litellm\n"
    assert _check("gateway/upstream/providers.py", lazy) == []
