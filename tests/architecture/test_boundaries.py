"""The code's boundaries, checked on the source and in fresh interpreters:
- the trainer, data, model and science modules import neither optuna nor mlflow;
- the report and the UI launcher do not import torch;
- only the tracking modules import mlflow; no private attribute of Optuna or MLflow is used;
- the import graph of sgdtune has no cycle, counting imports inside functions too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "sgdtune"
TRACKING_MODULES = {"sgdtune.store.tracking", "sgdtune.store.writer_process", "sgdtune.store.run_reader",
                    "sgdtune.store.logged_models"}
# Private names of Optuna and MLflow objects that sgdtune once reached for.
FOREIGN_PRIVATE = {"_storage", "_trial_id", "_study_id", "_tracking_client", "_get_store"}


def modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name, parsed."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _skipped(node: ast.If) -> bool:
    """`if __name__ == "__main__":` (runs as module __main__, another module object than
    the one imported) and `if TYPE_CHECKING:` (never runs)."""
    test = ast.unparse(node.test)
    return test in ("__name__ == '__main__'", "TYPE_CHECKING")


def imports(name: str, tree: ast.Module) -> set[str]:
    """Absolute names of what a module imports, anywhere in it (functions included)."""
    is_package = (PACKAGE.parent / Path(*name.split("."), "__init__.py")).exists()
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _skipped(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            for alias in node.names:  # `from . import study` imports a module
                found.add(f"{module}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def internal_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(name, tree) if m in mods and m != name} for name, tree in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first import cycle found by a depth-first search, as a path back to its start."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_of_sgdtune_has_no_cycle():
    cycle = find_cycle(internal_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_when_there_is_one():
    tree_a = ast.parse("def f():\n    from .b import x\n")  # a lazy import counts
    tree_b = ast.parse("from . import a\n")
    graph = {"sgdtune.a": imports("sgdtune.a", tree_a) & {"sgdtune.b"},
             "sgdtune.b": imports("sgdtune.b", tree_b) & {"sgdtune.a"}}
    assert find_cycle(graph) == ["sgdtune.a", "sgdtune.b", "sgdtune.a"]
    assert find_cycle({"sgdtune.a": {"sgdtune.b"}, "sgdtune.b": set()}) is None
    guarded = ast.parse("if __name__ == '__main__':\n    from .b import x\n")
    assert imports("sgdtune.a", guarded) == set()


def test_only_the_tracking_modules_import_mlflow():
    offenders = sorted(name for name, tree in modules().items()
                       if name not in TRACKING_MODULES
                       and any(m == "mlflow" or m.startswith("mlflow.") for m in imports(name, tree)))
    assert offenders == []


def test_no_private_attribute_of_optuna_or_mlflow_is_used():
    used = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in FOREIGN_PRIVATE:
                used.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module and any(
                    part.startswith("_") for part in node.module.split(".")[1:]) and \
                    node.module.split(".")[0] in ("optuna", "mlflow"):
                used.append(f"{name}:{node.lineno} from {node.module}")
    assert used == []


def loaded_after_import(*names: str) -> set[str]:
    """Top-level packages in sys.modules after importing `names` in a fresh interpreter."""
    code = ("import sys\n" + "".join(f"import {n}\n" for n in names)
            + "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_trainer_data_model_and_science_import_neither_optuna_nor_mlflow():
    loaded = loaded_after_import("sgdtune.trainer", "sgdtune.data", "sgdtune.model", "sgdtune.science.noise",
                                 "sgdtune.science.fits", "sgdtune.timing")
    assert "torch" in loaded  # the check itself works: these do load torch
    assert loaded.isdisjoint({"optuna", "mlflow"})


def test_report_and_ui_do_not_import_torch():
    loaded = loaded_after_import("sgdtune.report.write", "sgdtune.ui.server")  # the package resolves names on use
    assert "optuna" in loaded  # the report reads a study
    assert "torch" not in loaded


def test_the_command_line_module_imports_nothing_heavy_until_a_command_runs():
    assert loaded_after_import("sgdtune.cli").isdisjoint({"torch", "optuna", "mlflow"})


def test_toml_is_imported_in_one_place_with_the_python_3_10_fallback():
    where = sorted(name for name, tree in modules().items() if imports(name, tree) & {"tomllib", "tomli"})
    assert where == ["sgdtune.config"]
    source = (PACKAGE / "config.py").read_text()
    assert "import tomli as tomllib" in source and "sys.version_info >= (3, 11)" in source


# The report's modules in the order its data flows: each may import only those before it.
REPORT_FLOW = ["sgdtune.report.inputs", "sgdtune.report.sections", "sgdtune.report.noise_sections",
               "sgdtune.report.summary",
               "sgdtune.report.build", "sgdtune.report.figure_parts", "sgdtune.report.figures",
               "sgdtune.report.html", "sgdtune.report.write"]


def test_the_reports_words_never_import_its_drawing_nor_any_later_stage():
    graph = internal_graph()
    backwards = [f"{a} imports {b}" for i, a in enumerate(REPORT_FLOW) for b in REPORT_FLOW[i + 1:]
                 if b in graph[a]]
    assert backwards == []


def test_errors_and_names_import_nothing_of_sgdtune_but_errors():
    """Every other module may raise sgdtune's errors and check a study name: these two stay leaves."""
    graph = internal_graph()
    assert graph["sgdtune.errors"] == set()
    assert graph["sgdtune.names"] == {"sgdtune.errors"}


# The layers, top to bottom: a module imports only from its own layer or those below it.
# Each module's opening docstring names its layer ("Layer: study (...)"); docs/architecture.md
# draws them.
LAYERS = ["edge", "pages", "study", "report", "search", "store", "profile", "config", "trainer", "science", "base"]


def layer(tree: ast.Module) -> str | None:
    doc = ast.get_docstring(tree) or ""
    found = [line.split(":", 1)[1].split()[0].strip(".,;") for line in doc.splitlines() if line.startswith("Layer:")]
    return found[0] if len(found) == 1 else None


def test_every_module_says_its_layer_in_its_opening_docstring():
    unnamed = sorted(name for name, tree in modules().items() if layer(tree) not in LAYERS)
    assert unnamed == []


def upward_imports(trees: dict[str, ast.Module], graph: dict[str, set[str]]) -> list[str]:
    """The imports in `graph` from a module to one of a higher layer, as "a (layer) -> b (layer)"."""
    rank = {name: LAYERS.index(layer(tree)) for name, tree in trees.items() if layer(tree) in LAYERS}
    return sorted(f"{a} ({layer(trees[a])}) -> {b} ({layer(trees[b])})"
                  for a, targets in graph.items() for b in targets
                  if a in rank and b in rank and rank[b] < rank[a]
                  and b != "sgdtune")  # the package root: imported first by any of its modules anyway


def test_imports_run_down_the_layers():
    assert upward_imports(modules(), internal_graph()) == []


def test_the_layer_check_finds_an_import_that_runs_up():
    trees = {"sgdtune.trainer.loop": ast.parse('"""The loop.\n\nLayer: trainer (the loop).\n"""\n'),
             "sgdtune.store.tracking": ast.parse('"""Writes.\n\nLayer: store (MLflow).\n"""\n')}
    assert upward_imports(trees, {"sgdtune.trainer.loop": {"sgdtune.store.tracking"}}) == [
        "sgdtune.trainer.loop (trainer) -> sgdtune.store.tracking (store)"]
    assert upward_imports(trees, {"sgdtune.store.tracking": {"sgdtune.trainer.loop"}}) == []
    assert layer(ast.parse('"""No layer named."""\n')) is None


LONG_MODULE = 420  # lines: a module longer than this says in its opening docstring why it is one module


def test_a_module_over_about_400_lines_says_why_in_its_docstring():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > LONG_MODULE and " lines" not in doc.replace("\n", " "):
            unexplained.append(f"{path.relative_to(PACKAGE)}: {text.count(chr(10))} lines")
    assert unexplained == []
