"""The house rules a newcomer relies on, checked on the source itself."""

import ast
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
