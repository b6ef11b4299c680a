"""The layout's rules, read from the code's own imports with `ast` (docs/architecture.md says why):

- no import cycle anywhere;
- `serving` and `app.py` import nothing from `training` (the Space has no torch, no fastai);
- a stage imports no stage that comes after it: data ← train ← hub, and review (which reads train's model)
  sits beside hub, so neither imports the other;
- no stage imports the top of `training` (cli, pipeline), which import the stages; config and errors are shared.

Function-level imports count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Stage packages in pipeline order; a stage may import an earlier one, never a later one nor one of its rank.
STAGES = {"training.data": 0, "training.train": 1, "training.hub": 2, "training.review": 2}
SHARED = {"training.config", "training.errors"}  # importable by every stage; they import no stage


def project_modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for app.py and every module of serving/ and training/ under `root`."""
    found = {"app": root / "app.py"} if (root / "app.py").is_file() else {}
    for package in ("serving", "training"):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, anywhere in the file (top level or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports pkg.mod when that is a module, else a name from pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import training.data.stage.x` → the module part
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def stage_of(module: str) -> str | None:
    return next((s for s in STAGES if module == s or module.startswith(s + ".")), None)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the modules along it (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule of the module docstring, as 'a imports b: why'."""
    bad = [f"cycle: {' ↔ '.join(c)}" for c in cycles(graph)]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if (module == "app" or module.startswith("serving")) and target.startswith("training"):
                bad.append(f"{module} imports {target}: serving must run without training's packages")
            here, there = stage_of(module), stage_of(target)
            if here and there and here != there and STAGES[there] >= STAGES[here]:
                bad.append(f"{module} imports {target}: {there} does not come before {here}")
            if (here or module in SHARED) and target in ("training.cli", "training.pipeline", "training.__main__"):
                bad.append(f"{module} imports {target}: only the top of training ties the stages together")
            if module in SHARED and there:
                bad.append(f"{module} imports {target}: config and errors are shared by every stage")
    return bad


def test_the_project_keeps_its_import_rules():
    assert violations(import_graph(ROOT)) == []


def test_the_stage_packages_are_where_the_rules_expect_them():
    modules = project_modules(ROOT)
    assert set(STAGES) <= set(modules)
    assert {stage_of(m) for m in modules if m.startswith("training.")} == {*STAGES, None}


@pytest.mark.parametrize("files, expected", [
    ({"training/data/a.py": "from training.train import b", "training/train/b.py": ""},
     "training.data.a imports training.train.b: training.train does not come before training.data"),
    ({"training/hub/a.py": "import training.review.b", "training/review/b.py": ""},
     "training.hub.a imports training.review.b: training.review does not come before training.hub"),
    ({"serving/a.py": "def f():\n    from training.config import Config", "training/config.py": ""},
     "serving.a imports training.config: serving must run without training's packages"),
    ({"training/review/a.py": "from .b import x", "training/review/b.py": "from training.review import a"},
     "cycle: training.review.a ↔ training.review.b"),
    ({"training/data/a.py": "from training import pipeline", "training/pipeline.py": ""},
     "training.data.a imports training.pipeline: only the top of training ties the stages together"),
    ({"training/config.py": "from training.data.a import x", "training/data/a.py": ""},
     "training.config imports training.data.a: config and errors are shared by every stage"),
])
def test_each_rule_catches_a_planted_import(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for package in {Path(n).parts[0] for n in files}:
        (tmp_path / package).mkdir(exist_ok=True)
    assert expected in violations(import_graph(tmp_path))


def test_later_stages_may_import_earlier_ones(tmp_path):
    files = {"training/review/a.py": "from training.train.b import x\nfrom training.data.c import y",
             "training/hub/d.py": "from training.train.b import x",
             "training/train/b.py": "from training.data import c",
             "training/data/c.py": "from training.config import Config", "training/config.py": ""}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(import_graph(tmp_path)) == []
