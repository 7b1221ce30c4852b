"""The shape of kbert's code: functions a reader can take in at once."""

import ast
import pathlib

KBERT = pathlib.Path(__file__).resolve().parent.parent / "kbert"
MAX_FUNCTION_LINES = 80


def function_lengths():
    """`(path:line name, lines)` of every function in kbert/, its docstring not counted."""
    for path in sorted(KBERT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = node.body[0]
            has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            start = (node.body[1] if has_docstring and len(node.body) > 1 else first).lineno
            yield f"{path.relative_to(KBERT.parent)}:{node.lineno} {node.name}", node.end_lineno - start + 1


def test_no_function_in_kbert_is_longer_than_80_lines():
    long_functions = [(name, lines) for name, lines in function_lengths() if lines > MAX_FUNCTION_LINES]
    assert long_functions == []


def test_the_measure_sees_methods_and_nested_functions():
    # The walk sees nested functions and methods, so a long one anywhere would be reported.
    names = {name.split()[1] for name, _ in function_lengths()}
    assert {"__call__", "_words", "classification_dataset", "pack"} <= names
