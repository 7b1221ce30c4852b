"""Library errors name parameters, never command-line flags: only kbert/commands/ speaks flags."""

import ast
import pathlib
import re

from kbert.commands import options

KBERT = pathlib.Path(__file__).resolve().parent.parent / "kbert"
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def raised_flag_names():
    found = []
    for path in sorted(KBERT.rglob("*.py")):
        if (KBERT / "commands") in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str) and FLAG.search(part.value):
                    found.append(f"{path.relative_to(KBERT.parent)}:{node.lineno}: {part.value.strip()}")
    return found


def test_no_flag_name_in_an_error_raised_outside_the_commands():
    assert raised_flag_names() == []


def test_the_scan_finds_a_flag_name():
    tree = ast.parse('raise ValueError(f"Expected --steps to be positive. Received: {steps}")')
    [node] = [node for node in ast.walk(tree) if isinstance(node, ast.Raise)]
    assert any(
        FLAG.search(part.value) for part in ast.walk(node.exc) if isinstance(part, ast.Constant)
    )


def test_the_command_line_adds_the_flags_of_the_parameters_an_error_names():
    flags = {"learning_rate": "--learning-rate", "num_train_steps": "--steps", "seed": "--seed"}
    message = "Expected warmup_steps to be smaller than num_train_steps. Received: num_train_steps=2"
    assert options.with_flag_names(message, flags) == f"{message} (flag: --steps)"
    message = "Expected learning_rate to be positive. Received: learning_rate=0"
    assert options.with_flag_names(message, flags) == f"{message} (flag: --learning-rate)"
    assert options.with_flag_names("data/seed=1.txt not found", {}) == "data/seed=1.txt not found"
