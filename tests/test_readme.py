"""The README's commands are the ones CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    command = ci_lines[-1]
    assert "pytest" in command
    assert re.search(r"^" + re.escape(command) + r"$", readme, re.M), command


def test_readme_main_command_runs_the_trainer():
    readme = (ROOT / "README.md").read_text()
    assert re.search(
        r'^python3 -m venv .venv && .venv/bin/pip install -e "\.\[train,test\]" && '
        r"\.venv/bin/python -m train$",
        readme,
        re.M,
    )
