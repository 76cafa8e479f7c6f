"""Enforces the import rules of DESIGN.md ("Import rules") with stdlib `ast`: no new dependency.

Every .py under gateway/ and trainer/ is parsed; every import is collected (module level and
inside functions, `import x`, `from x import y`, relative imports resolved, and
`importlib.import_module("x")` with a literal name). A package that does not exist yet passes.
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
    """Files matching `scope` (minus `exclude`) may import the project modules in `may` and
    must not import the modules in `must_not`. Names match themselves and their submodules;
    the longest matching name decides. A project module that matches nothing is forbidden
    when `may` is a closed list (`any_project=False`)."""

    name: str
    scope: str
    may: tuple[str, ...]
    must_not: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    any_project: bool = False


WEB = ("starlette", "httpx", "litellm")
RULES = (
    Rule(
        "formats imports nothing of the project and no web or torch stack",
        "gateway/formats.py",
        may=(),
        must_not=(*WEB, "torch", "transformers"),
    ),
    Rule(
        "criteria import only base, definitions, formats, protocol, reward_serving.protocol",
        "gateway/criteria/*",
        may=(
            "gateway.criteria.base",
            "gateway.criteria.definitions",
            "gateway.formats",
            "gateway.protocol",
            "gateway.reward_serving.protocol",
        ),
        must_not=("gateway.proxy", "gateway.store", "starlette", "torch", "trainer"),
        exclude=("gateway/criteria/__init__.py",),
    ),
    # The explicit registry (DESIGN: criteria/__init__.py) imports each scorer module.
    Rule(
        "the criteria registry imports its scorers and what they may import",
        "gateway/criteria/__init__.py",
        may=("gateway.criteria", "gateway.formats", "gateway.protocol", "gateway.reward_serving.protocol"),
        must_not=("gateway.proxy", "gateway.store", "starlette", "torch", "trainer"),
    ),
    Rule(
        "the rest of gateway: no torch, no trainer, no reward_serving internals",
        "gateway/*",
        may=("gateway", "gateway.reward_serving.protocol"),
        must_not=("torch", "transformers", "trainer", "gateway.reward_serving"),
        exclude=("gateway/reward_serving/*", "gateway/__main__.py", "gateway/cli.py"),
        any_project=True,
    ),
    Rule(
        "reward_serving imports only itself and formats, never gateway web code",
        "gateway/reward_serving/*",
        may=("gateway.reward_serving", "gateway.formats"),
        must_not=("gateway.proxy", "gateway.criteria", "gateway.config", "gateway.errors", "gateway.metrics"),
    ),
    Rule(
        "trainer imports only gateway.formats (and itself), no web stack",
        "trainer/*",
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

    def visit(node: ast.AST, top_level: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            top_level = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, top_level)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, top_level) for alias in node.names)
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
                found.append(Import(sub if is_sub else base, node.lineno, top_level))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            if called in ("import_module", "__import__") and args and isinstance(args[0], ast.Constant):
                name = args[0].value
                if isinstance(name, str) and not name.startswith("."):
                    found.append(Import(name, node.lineno, top_level))
        for child in ast.iter_child_nodes(node):
            visit(child, top_level)

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
    return fnmatch(relpath, rule.scope) and not any(fnmatch(relpath, x) for x in rule.exclude)


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


def test_composition_root_is_the_only_exemption() -> None:
    # The rest-of-gateway rule excludes exactly the composition root and reward_serving/.
    rest = next(r for r in RULES if r.name.startswith("the rest of gateway"))
    assert not in_scope(rest, "gateway/__main__.py") and not in_scope(rest, "gateway/cli.py")
    assert not in_scope(rest, "gateway/reward_serving/engine.py")
    assert in_scope(rest, "gateway/proxy.py") and in_scope(rest, "gateway/criteria/llm_judge.py")


# ---------------------------------------------------------------- the checker can fail


def _check(relpath: str, source: str) -> list[str]:
    module, is_package = module_name(relpath)
    imports = collect_imports(source, module, is_package)
    problems = [p for rule in RULES if in_scope(rule, relpath) for p in rule_violations(rule, imports)]
    return list(dict.fromkeys(problems + module_level_violations(imports)))  # one line per problem


def test_checker_catches_forbidden_imports_in_synthetic_sources() -> None:
    # A lazy torch import inside a function is still an import of formats.py.
    assert _check("gateway/formats.py", "def f():\n    import torch\n") == [
        "line 2: imports torch (must not import torch)"
    ]
    assert _check("gateway/formats.py", "from gateway import protocol\n")
    # Relative imports are resolved: gateway.criteria.foo -> gateway.proxy.
    assert _check("gateway/criteria/foo.py", "from ..proxy import create_app\n")
    assert _check("gateway/criteria/foo.py", "from .. import store\n")
    assert _check("gateway/criteria/foo.py", "from starlette.responses import JSONResponse\n")
    assert _check("gateway/proxy.py", "from gateway.reward_serving.engine import TorchRewardEngine\n")
    assert _check("gateway/proxy.py", "from trainer.train import train\n")
    assert _check("gateway/reward_serving/server.py", "from gateway.errors import GatewayError\n")
    assert _check("gateway/reward_serving/server.py", "from ..metrics import REQUESTS\n")
    assert _check("trainer/train.py", "import httpx\n")
    assert _check("trainer/train.py", "from gateway.proxy import create_app\n")
    assert _check("trainer/train.py", "import importlib\nimportlib.import_module('litellm')\n")
    assert _check("gateway/providers.py", "import litellm\n") == [
        "line 1: imports litellm at module level (import it inside the function)"
    ]
    assert _check("gateway/providers.py", "try:\n    import litellm\nexcept ImportError:\n    pass\n")


def test_checker_accepts_what_the_rules_allow() -> None:
    assert _check("gateway/formats.py", "import gzip\nimport json\nfrom typing import Any\n") == []
    assert (
        _check(
            "gateway/criteria/rules.py",
            "from .base import Criterion\nfrom gateway import formats\nfrom ..protocol import ChatCompletion\n",
        )
        == []
    )
    assert (
        _check(
            "gateway/criteria/reward_model.py",
            "import httpx\nfrom gateway.reward_serving.protocol import ScoreRequest\n",
        )
        == []
    )
    assert _check("gateway/criteria/__init__.py", "from . import reward_model, rules\n") == []
    assert _check("gateway/proxy.py", "from gateway.reward_serving.protocol import ScoreRequest\n") == []
    assert _check("gateway/proxy.py", "from .config import GatewaySettings\nfrom . import store\n") == []
    assert _check("gateway/cli.py", "from gateway.reward_serving.server import create_app\n") == []
    assert (
        _check(
            "gateway/reward_serving/engine.py",
            "import torch\nfrom .batcher import Batcher\nfrom ..formats import render_responses\n",
        )
        == []
    )
    assert (
        _check(
            "trainer/train.py",
            "import torch\nfrom trainer.config import Config\nfrom gateway.formats import load_pairs\n",
        )
        == []
    )
    assert _check("gateway/providers.py", "def call():\n    import litellm\n") == []
    assert (
        _check("gateway/providers.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import litellm\n")
        == []
    )
