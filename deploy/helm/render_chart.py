#!/usr/bin/env python3
"""Render the rewardgate Helm chart without helm: `python deploy/helm/render_chart.py [-f values.yaml ...]`.

Interprets the subset of Helm's Go templates that deploy/helm/rewardgate uses: pipelines, variables (`$x := ...`),
if / else if / else, range (with `$k, $v :=`), with, define / include, `{{-` / `-}}` trimming, comments and the Sprig
functions in `GoTemplate.functions`. Stricter than Helm: a value missing from values.yaml is an error, not an empty
string. tests/deploy renders the chart with it; where helm is installed, `helm template` is the reference (tested too).
Needs PyYAML only; imports nothing from the project.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "rewardgate"


def merge_values(base: Any, override: Any) -> Any:
    """Helm's rule for values files: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_values(base[key], value) if key in base else value
        return merged
    return override


def load_values(chart: Path, files: Sequence[Path] = ()) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text())
    for path in files:
        values = merge_values(values, yaml.safe_load(Path(path).read_text()) or {})
    return values


class TemplateError(Exception):
    """A template this interpreter cannot render: bad syntax, an unknown function, a value missing from the values."""


class TemplateFailure(TemplateError):
    """The template called `fail`: Helm refuses to render with this message."""


def _check(condition: object, message: str) -> None:
    if not condition:
        raise TemplateError(message)


@dataclass
class Node:
    kind: str  # text | output | if | range | with
    text: str = ""
    expr: str = ""
    names: tuple[str, ...] = ()  # range variables
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_ASSIGN = re.compile(r"(\$\w+)\s*:=\s*(.+)", re.DOTALL)  # a variable, declared in the enclosing block
_EXPR = re.compile(r'\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|[()|]|:=|,|[$.A-Za-z_][$.\w]*)')


def _yaml(value: Any) -> str:
    return "{}" if value == {} else yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _go_string(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    _check(isinstance(value, str | int | float), f"cannot print {value!r} in a template")
    return str(value)


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[svd]", "%s", fmt) % tuple(_go_string(a) for a in args)


class GoTemplate:
    """Renders Helm templates written in the subset the chart uses: {{ pipelines }}, `$x :=` variables, if/else
    if/else, range (with `$k, $v :=`), with, define/include, `{{-`/`-}}` trimming, comments, and the Sprig functions
    in `functions`."""

    def __init__(self, chart: Path, values: Mapping[str, Any], release: str = "rg") -> None:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        base = f"{chart.name}/templates"
        self.root = {
            "Values": values,
            "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
            "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
            "Template": {"BasePath": base},
        }
        self.templates: dict[str, list[Node]] = {}
        self.files: dict[str, Path] = {}
        for path in sorted((chart / "templates").iterdir()):
            self.files[path.name] = path
            self.templates[f"{base}/{path.name}"] = self._parse(path.read_text())
        self.functions: dict[str, Callable[..., Any]] = {
            "include": lambda name, data: self._render(self.templates[name], data, {}),
            "toYaml": _yaml,
            "nindent": lambda n, s: "\n" + "\n".join(" " * n + ln if ln else ln for ln in s.split("\n")),
            "indent": lambda n, s: "\n".join(" " * n + ln if ln else ln for ln in s.split("\n")),
            "quote": lambda v: json.dumps(_go_string(v)),
            "default": lambda d, v=None: v if v else d,
            "upper": lambda s: s.upper(),
            "lower": lambda s: s.lower(),
            "trunc": lambda n, s: s[:n],
            "trimSuffix": lambda suffix, s: s.removesuffix(suffix),
            "contains": lambda sub, s: sub in s,
            "hasPrefix": lambda prefix, s: s.startswith(prefix),
            "join": lambda sep, items: sep.join(_go_string(i) for i in items),
            "list": lambda *items: list(items),
            "has": lambda item, items: item in items,
            "printf": _printf,
            "print": lambda *a: "".join(_go_string(x) for x in a),
            "sha256sum": lambda s: hashlib.sha256(s.encode()).hexdigest(),
            "int": int,
            "not": lambda v: not v,
            "and": lambda *a: next((x for x in a if not x), a[-1]),
            "or": lambda *a: next((x for x in a if x), a[-1]),
            "eq": lambda a, b: a == b,
            "ne": lambda a, b: a != b,
            "gt": lambda a, b: a > b,
            "lt": lambda a, b: a < b,
            "fail": self._fail,
        }

    @staticmethod
    def _fail(message: str) -> str:
        raise TemplateFailure(message)

    def render(self, name: str) -> list[dict[str, Any]]:
        """The manifests of templates/<name>; every template is parsed first, so defines are global (as in Helm)."""
        text = self._render(self.templates[f"{self.root['Template']['BasePath']}/{name}"], self.root, {})
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]

    def render_string(self, source: str) -> str:
        return self._render(self._parse(source), self.root, {})

    def render_all(self) -> list[dict[str, Any]]:
        return [doc for name in self.files if not name.startswith("_") for doc in self.render(name)]

    # -- parsing

    def _parse(self, source: str) -> list[Node]:
        tokens: list[tuple[str, str]] = []
        position, trim_next = 0, False
        for m in _ACTION.finditer(source):
            text = source[position : m.start()]
            text = text.lstrip() if trim_next else text
            tokens.append(("text", text.rstrip() if m.group(1) else text))
            tokens.append(("action", m.group(2)))
            position, trim_next = m.end(), bool(m.group(3))
        tail = source[position:]
        tokens.append(("text", tail.lstrip() if trim_next else tail))
        nodes, stop = self._block(iter(tokens))
        _check(stop is None, f"unexpected {{{{ {stop} }}}}")
        return nodes

    def _block(self, tokens: Iterator[tuple[str, str]]) -> tuple[list[Node], str | None]:
        nodes: list[Node] = []
        for kind, value in tokens:
            if kind == "text" or value.startswith("/*"):
                nodes.append(Node("text", text=value if kind == "text" else ""))
                continue
            word, _, rest = value.partition(" ")
            if word in ("end", "else"):
                return nodes, value
            if word == "define":
                body, stop = self._block(tokens)
                _check(stop == "end", f"define {rest}: unterminated")
                self.templates[json.loads(rest)] = body
            elif word in ("if", "with", "range"):
                node = Node(word, expr=rest)
                if word == "range" and ":=" in rest:
                    names, _, node.expr = rest.partition(":=")
                    node.names = tuple(n.strip() for n in names.split(","))
                node.body, stop = self._block(tokens)
                current = node
                while stop and stop.startswith("else if "):  # else if X == else {{ if X }} ... {{ end }}
                    nested = Node("if", expr=stop.removeprefix("else if "))
                    nested.body, stop = self._block(tokens)
                    current.orelse, current = [nested], nested
                if stop == "else":
                    current.orelse, stop = self._block(tokens)
                _check(stop == "end", f"{word} {rest}: unterminated ({stop})")
                nodes.append(node)
            else:
                nodes.append(Node("output", expr=value))
        return nodes, None

    # -- evaluation

    def _render(self, nodes: list[Node], dot: Any, variables: dict[str, Any]) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "output" and (assign := _ASSIGN.fullmatch(node.expr)):
                variables[assign.group(1)] = self._pipeline(assign.group(2), dot, variables)  # seen by what follows
            elif node.kind == "output":
                out.append(_go_string(self._pipeline(node.expr, dot, variables)))
            elif node.kind == "if":
                chosen = node.body if self._pipeline(node.expr, dot, variables) else node.orelse
                out.append(self._render(chosen, dot, dict(variables)))
            elif node.kind == "with":
                value = self._pipeline(node.expr, dot, variables)
                out.append(self._render(node.body, value, dict(variables)) if value else "")
            else:
                out.append(self._range(node, dot, variables))
        return "".join(out)

    def _range(self, node: Node, dot: Any, variables: dict[str, Any]) -> str:
        collection = self._pipeline(node.expr, dot, variables)
        pairs = sorted(collection.items()) if isinstance(collection, dict) else list(enumerate(collection or []))
        if not pairs:
            return self._render(node.orelse, dot, dict(variables))
        out = []
        for key, item in pairs:
            scope = dict(variables)
            if len(node.names) == 2:
                scope[node.names[0]], scope[node.names[1]] = key, item
            elif node.names:
                scope[node.names[0]] = item
            out.append(self._render(node.body, item, scope))
        return "".join(out)

    def _pipeline(self, expr: str, dot: Any, variables: dict[str, Any]) -> Any:
        tokens, position = [], 0
        while m := _EXPR.match(expr, position):
            tokens.append(m.group(1))
            position = m.end()
        _check(not expr[position:].strip(), f"cannot read {expr!r} from {expr[position:]!r}")
        value = self._commands(tokens, dot, variables)
        _check(not tokens, f"{expr!r}: unexpected {tokens}")
        return value

    def _commands(self, tokens: list[str], dot: Any, variables: dict[str, Any]) -> Any:
        """Reads `command | command ...` off the front of `tokens`, up to a closing parenthesis or the end."""
        value, piped = None, False
        while True:
            operands: list[Any] = []
            while tokens and tokens[0] not in ("|", ")"):
                operands.append(self._operand(tokens, dot, variables))
            head = operands[0] if operands else None
            if isinstance(head, _Function):
                args = operands[1:] + ([value] if piped else [])
                value = self.functions[head.name](*args)
            else:
                _check(len(operands) == 1 and not piped, f"cannot call {operands!r}")
                value = head
            if not tokens or tokens[0] == ")":
                return value
            tokens.pop(0)  # |
            piped = True

    def _operand(self, tokens: list[str], dot: Any, variables: dict[str, Any]) -> Any:
        token = tokens.pop(0)
        if token == "(":
            value = self._commands(tokens, dot, variables)
            _check(tokens[:1] == [")"], "unbalanced parentheses")
            tokens.pop(0)
            return value
        if token.startswith('"'):
            return json.loads(token)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token in ("true", "false"):
            return token == "true"
        if token.startswith("$"):
            name, _, path = token.partition(".")
            return self._field(self.root if name == "$" else variables[name], path)
        if token.startswith("."):
            return self._field(dot, token[1:])
        _check(token in self.functions, f"unknown function {token}")
        return _Function(token)

    @staticmethod
    def _field(value: Any, path: str) -> Any:
        for part in filter(None, path.split(".")):
            _check(isinstance(value, dict) and part in value, f"no value {part!r} (in {path!r})")
            value = value[part]
        return value


@dataclass(frozen=True)
class _Function:
    name: str


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[], help="values file (repeatable)")
    parser.add_argument("--release", default="rewardgate", help="release name")
    args = parser.parse_args(argv)
    try:
        docs = GoTemplate(args.chart, load_values(args.chart, args.values), args.release).render_all()
    except TemplateError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print("\n---\n".join(yaml.safe_dump(doc, sort_keys=False).rstrip() for doc in docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
