"""The shape of the code that keeps it readable and open to new tasks: the folders are floors and imports run
downward only, the generic modules never name a task, the training loop stays short, and the task contract is
enforced when a task is defined.

`python -m pytest tests/test_structure.py` is the check; the import graph includes imports inside functions, so
neither a cycle nor an import back up can hide in one. docs/architecture.md describes the floors.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "llmtune"
# The floors, from the ground up (docs/architecture.md). A module imports modules of its own folder and of lower
# floors only; two folders on one floor do not import each other. The package root holds the top floor's faces.
FLOORS = [
    ("common", "metrics"),  # ground helpers; metric definitions
    ("models",),  # checkpoints: where they come from, how they load and adapt
    ("data",),  # reading splits, augmentation, the leakage audit
    ("tasks",),  # what each task does to a batch, behind tasks/base.py
    ("recipe",),  # the whole schema, loading and overrides
    ("inference", "reports"),  # running a model over rows; reports of finished runs
    ("engine", "deploy"),  # training; shipping a saved run
    ("commands", "ui"),  # commands built on train and evaluate; the web page
    ("cli", "__init__"),  # the faces: the command line and the lazy Python API
    ("__main__",),  # `python -m llmtune`
]
# The modules that must work for any task without knowing one (the task contract is their only source).
GENERIC = [
    "engine/training",
    "inference/evaluation",
    "inference/saved",
    "inference/prediction",
    "inference/batches",
    "inference/devices",
    "engine/builders",
    "engine/session",
    "cli",
    "deploy/hub",
    "reports/report",
    "reports/plots",
    "deploy/merge",
]
TASK_WORDS = re.compile(r"label_names|index_labels|task\.type|options\.type|question_answering|GENERATIVE")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The llmtune modules a module imports anywhere (functions included), except for type checking only."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            target = ".".join(part for part in (base, node.module or "") if part)
            candidates = [f"{target}.{alias.name}" for alias in node.names]
            # `from . import sibling` needs the package, which is already imported: it holds this module
            if not module_name(path).startswith(target + "."):
                candidates.append(target)
            found |= {name for name in candidates if name in known}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
    return found - {module_name(path)}


def test_imports_have_no_cycle():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: imported_modules(path, set(paths)) for name, path in paths.items()}
    graph["llmtune"] = set()  # the package's lazy face imports nothing at import time
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for child in sorted(graph[name]):
            if state.get(child) == "open":
                cycle = trail[trail.index(child) :] + [child] if child in trail else [name, child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child, [*trail, child])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def folder_of(name: str) -> str:
    """The floor plan's name for a module: its folder under llmtune/, or its own name at the package root."""
    parts = name.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_imports_run_downward_only():
    floor = {folder: number for number, folders in enumerate(FLOORS) for folder in folders}
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    assert {folder_of(name) for name in paths} == set(floor), "a folder or root module is missing from FLOORS"
    upward = [
        f"{name} -> {target}"
        for name, path in sorted(paths.items())
        for target in sorted(imported_modules(path, set(paths)))
        if folder_of(target) != folder_of(name) and floor[folder_of(target)] >= floor[folder_of(name)]
    ]
    assert not upward, "imports that do not run down a floor: " + "; ".join(upward)


def test_the_package_root_holds_the_faces_and_each_folder_says_what_it_holds():
    root_modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 6, root_modules
    for folder in sorted(path for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"):
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        first = (docstring or "").splitlines()[0] if docstring else ""
        assert first.endswith(".") and len(first) <= 120, f"llmtune/{folder.name}: its story in one first line"


def test_every_module_opens_with_its_story():
    untold = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__main__.py" and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert not untold, untold


def test_generic_modules_name_no_task():
    for name in GENERIC:
        for number, line in enumerate((PACKAGE / f"{name}.py").read_text().splitlines(), 1):
            assert not TASK_WORDS.search(line), f"llmtune/{name}.py:{number} knows about a task: {line.strip()}"


def function_lines(path: Path, name: str) -> ast.FunctionDef:
    return next(
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == name
    )


def test_the_training_loop_reads_in_one_screen():
    fit = function_lines(PACKAGE / "engine" / "training.py", "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 80
    loop = next(node for node in ast.walk(fit) if isinstance(node, ast.For))
    assert loop.end_lineno - loop.lineno + 1 <= 40


def test_no_function_is_longer_than_60_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long


def test_the_training_module_holds_the_loop_alone():
    lines = len((PACKAGE / "engine" / "training.py").read_text().splitlines())
    assert lines <= 400, f"llmtune/engine/training.py has {lines} lines: move what is not the loop's story out"


def callers(attribute: str) -> set[str]:
    """The llmtune modules that call `something.attribute(...)` or `attribute(...)`."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                function = node.func
                name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
                if name == attribute:
                    found.add(module_name(path))
    return found


def test_one_road_from_a_saved_model():
    # Training builds its model in engine/builders.py and data.augment its helper models; everything that loads a saved
    # one (eval, predict, serve, export, merge, push) goes through inference.load_run.
    assert callers("load_model") - {"llmtune.engine.training"} == {
        "llmtune.engine.builders",
        "llmtune.data.augment",
        "llmtune.inference.saved",
    }
    assert (
        callers("from_pretrained")
        & {"llmtune.deploy.serve", "llmtune.deploy.export", "llmtune.deploy.merge", "llmtune.cli"}
        == set()
    )


def test_one_builder_of_evaluation_batches():
    assert callers("eval_batches") == {"llmtune.engine.builders", "llmtune.inference.evaluation"}
    assert callers("eval_loader") == {"llmtune.inference.evaluation"}  # through eval_batches only


def test_registry_builds_the_schema_and_the_predict_options():
    from typer.testing import CliRunner

    from llmtune import recipe, tasks
    from llmtune.cli import app

    assert set(recipe.union_members("task")) == set(tasks.TASKS)
    help_text = CliRunner().invoke(app, ["predict", "--help"], terminal_width=200).stdout
    for field in tasks.predict_fields():
        assert "--" + field.replace("_", "-") in help_text, field


def test_a_task_missing_part_of_the_contract_fails_when_defined():
    from llmtune.tasks.base import Task
    from llmtune.tasks.classification import Classification

    with pytest.raises(TypeError, match=r"task Incomplete lacks .*eval_step.*, hub_task.* of the contract"):

        class Incomplete(Task):
            name = "incomplete"

    class Complete(Classification):  # inherits the whole contract
        name = "complete"


def test_the_architecture_page_draws_the_floors_the_code_keeps():
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", (ROOT / "docs" / "architecture.md").read_text(), re.M)
    drawn = {
        int(number): {name.strip("`/").removesuffix(".py") for name in re.findall(r"`[^`]+`", cell)}
        for number, cell in rows
    }
    assert drawn == {number: set(folders) for number, folders in enumerate(FLOORS)}
