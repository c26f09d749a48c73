"""The house rules a newcomer relies on, checked on the source itself."""

import ast
import subprocess
import sys
from pathlib import Path

import banray

PACKAGE = Path(banray.__file__).parent
MAX_LINES = 60


def test_no_function_in_banray_is_longer_than_sixty_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_record_types_live_apart_from_the_code_that_runs():
    tree = ast.parse((PACKAGE / "records.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name and (name.startswith(("ray", "torch", "mlflow", "banray")))}


# The folders of banray bottom up, "" standing for the modules at its top level (the shared vocabulary): a module
# imports only from its own folder and those before it. `banray/__main__.py` is the entry point, above them all.
FLOORS = ["catalog", "", "training", "trial", "results", "sweep", "commands"]


def banray_imports() -> dict[str, set[str]]:
    """Module → the banray modules it imports, at module level or inside a function (a module's own folder
    package counts as that folder's)."""
    modules = {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
               for path in PACKAGE.rglob("*.py")}
    imports: dict[str, set[str]] = {}
    for module, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        imports[module] = {name for name in found if name in modules and name != module}
    return imports


def floor(module: str) -> int:
    parts = module.split(".")
    folder = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else ""
    return len(FLOORS) if module == "banray.__main__" else FLOORS.index(folder)


def test_every_import_points_down_the_folders_that_read_as_the_pipeline():
    upward = sorted(f"{module} → {target}" for module, targets in banray_imports().items() for target in targets
                    if floor(target) > floor(module))
    assert upward == []


def test_no_banray_modules_import_each_other_in_a_circle():
    imports, seen, circles = banray_imports(), {}, []

    def visit(module: str, path: list[str]) -> None:
        seen[module] = "open"
        for target in sorted(imports[module]):
            if seen.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in seen:
                visit(target, [*path, target])
        seen[module] = "done"

    for module in sorted(imports):
        if module not in seen:
            visit(module, [module])
    assert circles == []


def test_every_module_lives_in_one_of_the_pipelines_folders():
    folders = {path.parent.relative_to(PACKAGE).parts[:1] for path in PACKAGE.rglob("*.py")}
    assert {folder[0] if folder else "" for folder in folders} == set(FLOORS)


def test_the_tune_trainable_that_drives_a_warm_host_imports_no_torch():
    """Its process is one per trial at a time on every node: a torch import there costs seconds of CPU."""
    script = "import sys, banray.trial.hosts\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# Ray's and pyarrow's modules that are not their public API: banray uses them in banray/ray_internals.py alone,
# where each use has a test (tests/test_ray_internals.py) that fails on a Ray upgrade that moves or changes it.
PRIVATE_MODULES = ("ray.tune.execution", "ray.tune.trainable", "ray.tune.result", "ray.tune.impl", "ray.scripts")


def test_private_ray_apis_are_used_only_in_ray_internals():
    uses = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "ray_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            private = [n for n in names if n.startswith(("ray", "pyarrow")) and
                       ("._" in n or n.startswith(PRIVATE_MODULES))]
            if isinstance(node, ast.Attribute) and node.attr == "__reduce__":  # pyarrow options in pickle form
                private.append(node.attr)
            uses += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}" for name in private]
    assert uses == []


def test_the_environment_is_written_in_one_place():
    """banray sets only the variables Ray, MLflow, pyarrow and the AWS SDK read from the environment alone, all
    through banray/environment.py; its own settings travel as typed values."""
    writes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "environment.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("update", "setdefault", "pop", "clear") else None
            if isinstance(node, (ast.Assign, ast.Delete)):
                target = next((t.value for t in getattr(node, "targets", []) if isinstance(t, ast.Subscript)), None)
            if target is not None and ast.unparse(target) == "os.environ":
                writes.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert writes == []
