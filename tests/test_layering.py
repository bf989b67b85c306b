"""The package imports downward only: cli → report → study → models → analysis → edit → memit →
rome → metrics → plumbing → facts, plus the leaf modules (errors, signals, paths, strict, hparams)
that import nothing else from tuner. Every import counts,
including the lazy ones inside functions, and no two modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

LAYERS = ["facts", "plumbing", "metrics", "rome", "memit", "edit", "analysis", "models", "study", "report",
          "cli"]  # bottom → top
LEAVES = {"errors", "signals", "paths", "strict", "hparams"}
PACKAGE = ROOT / "tuner"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ``tuner.*`` module this file imports, wherever the import statement is."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tuner")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuner") and node.level == 0:
            for alias in node.names:  # `from tuner import hparams` imports tuner.hparams
                full = f"{node.module}.{alias.name}"
                out.add(full if (PACKAGE.parent / (full.replace(".", "/") + ".py")).exists() else node.module)
    return out


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in root.rglob("*.py")}


def unit(module: str) -> str:
    """The layer a module belongs to: its subpackage, or the top-level module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tuner"


def violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in g.items():
        src = unit(mod)
        for dep in deps:
            dst = unit(dep)
            if dst == src or dst == "tuner" or dep == "tuner":
                continue
            if src in LEAVES:
                ok = dst in LEAVES
            elif dst in LEAVES:
                ok = True
            elif src == "__main__":
                ok = dst == "cli"
            elif src == "tuner":
                ok = dst in LEAVES
            else:
                ok = src in LAYERS and dst in LAYERS and LAYERS.index(dst) < LAYERS.index(src)
            if not ok:
                bad.append(f"{mod} imports {dep} ({src} → {dst})")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Module-level import cycles (depth-first search for back edges)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(g.get(node, ())):
            if dep not in g:
                continue
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def test_every_subpackage_is_in_a_layer():
    units = {unit(m) for m in graph()} - {"tuner", "__main__"}
    assert units <= set(LAYERS) | LEAVES, units - set(LAYERS) - LEAVES


def test_imports_run_downward_only():
    assert violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checker itself: a study module importing the report, and two modules importing each other."""
    g = graph()
    g["tuner.study.launch"] = g["tuner.study.launch"] | {"tuner.report.html"}
    assert any("tuner.study.launch imports tuner.report.html" in v for v in violations(g))
    g["tuner.cli.main"] = g["tuner.cli.main"] | {"tuner.cli.options"}
    g["tuner.cli.options"] = g["tuner.cli.options"] | {"tuner.cli.main"}
    assert cycles(g)
