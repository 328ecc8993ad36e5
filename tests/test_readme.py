"""The README's commands are the ones CI runs and the ones the package installs."""

import fnmatch
import os
import pathlib
import re
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test extra installs tomli on 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]

MAIN_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[train]" && .venv/bin/jaxloss-train'
)
FAST_CHECKS = (
    ".venv/bin/ruff format --check .",
    ".venv/bin/ruff check .",
    ".venv/bin/mypy jaxloss",
)
# What the sdist must carry so that its own test suite runs (MANIFEST.in).
SDIST_FOLDERS = ("tests", "parity_tests", "examples", "benchmarks")
SDIST_FILES = ("conftest.py", "README.md", "LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", ".ci/run")


def _readme():
    return (ROOT / "README.md").read_text()


def _ci_commands():
    return [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _code_block_lines(markdown):
    """The lines inside the markdown's fenced code blocks."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def test_ci_runs_the_readme_test_command():
    command = _ci_commands()[-1]
    assert "pytest" in command
    assert re.search(r"^" + re.escape(command) + r"$", _readme(), re.M), command


def test_ci_runs_the_fast_checks_before_the_tests():
    commands = _ci_commands()
    assert "set -euo pipefail" in commands
    assert "rm -rf .venv" in commands
    for check in FAST_CHECKS:
        assert check in commands, check
        assert commands.index(check) < len(commands) - 1, check


def test_readme_main_command_runs_the_trainer():
    assert re.search(r"^" + re.escape(MAIN_COMMAND) + r"$", _readme(), re.M), MAIN_COMMAND


def test_readme_commands_use_the_installed_console_scripts():
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert {"jaxloss-train", "jaxloss-verify"} <= set(scripts)
    lines = _code_block_lines(_readme())
    module_runs = [line for line in lines if re.search(r"\bpython3? -m train\b", line)]
    assert not module_runs, f"run the console scripts ({sorted(scripts)}) instead: {module_runs}"
    used = {name for line in lines for name in re.findall(r"\bjaxloss-[a-z][a-z-]*\b", line)}
    assert used, "the README shows no jaxloss-* command"
    assert used <= set(scripts), f"not in [project.scripts]: {sorted(used - set(scripts))}"


def _manifest_rules():
    rules = []
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            action, *args = line.split()
            rules.append((action, args))
    return rules


def _match(path, pattern):
    """setuptools' MANIFEST.in glob: `*` and `?` stay within one path component."""
    parts, pattern_parts = path.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern_parts, strict=True)
    )


def _in_sdist(path, rules):
    """Whether MANIFEST.in's rules put `path` (relative, with /) into the sdist."""
    included = False
    for action, args in rules:
        if action == "include":
            included |= any(_match(path, pattern) for pattern in args)
        elif action == "exclude":
            included &= not any(_match(path, pattern) for pattern in args)
        elif action == "recursive-include":
            folder, *patterns = args
            if path.startswith(folder.rstrip("/") + "/"):
                name = path.rsplit("/", 1)[-1]
                included |= any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        elif action == "graft":
            included |= path.startswith(args[0].rstrip("/") + "/")
        elif action == "prune":
            included &= not path.startswith(args[0].rstrip("/") + "/")
        elif action == "global-exclude":
            name = path.rsplit("/", 1)[-1]
            included &= not any(fnmatch.fnmatchcase(name, pattern) for pattern in args)
        else:
            raise AssertionError(f"teach this test MANIFEST.in's {action!r}")
    return included


def test_sdist_manifest_carries_the_test_suite():
    rules = _manifest_rules()
    named = " ".join(" ".join(args) for _, args in rules).split()
    for folder in SDIST_FOLDERS:
        assert any(word == folder or word.startswith(folder + "/") for word in named), folder
    for name in SDIST_FILES:
        assert _in_sdist(name, rules), name
    assert not _in_sdist("benchmarks/results/bench_losses.json", rules)
    assert not _in_sdist("tests/__pycache__/test_readme.cpython-311.pyc", rules)
    # Every file in the test folders ships, whatever its kind (caches and results aside).
    missing = []
    for folder in SDIST_FOLDERS:
        for dirpath, dirnames, filenames in os.walk(ROOT / folder):
            rel_dir = pathlib.Path(dirpath).relative_to(ROOT).as_posix()
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".")
                and d != "__pycache__"
                and f"{rel_dir}/{d}" != "benchmarks/results"
            ]
            for name in filenames:
                path = f"{rel_dir}/{name}"
                if not name.endswith((".pyc", ".pyo")) and not _in_sdist(path, rules):
                    missing.append(path)
    assert not missing, f"MANIFEST.in leaves out {missing}"
