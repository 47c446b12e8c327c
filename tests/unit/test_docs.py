"""Docs stay true to the code: the CLI reference is regenerated, README commands exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from edgenas.cli import main
from edgenas.cli.docgen import render

REPO = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current() -> None:
    committed = (REPO / "docs" / "cli.md").read_text()
    assert committed.strip() == render().strip(), (
        "docs/cli.md is stale: run `.venv/bin/python -m edgenas.cli.docgen > docs/cli.md`")


def _resolve(words: list[str]) -> click.Command | None:
    cmd: click.Command = main
    for word in words:
        if word.startswith("-") or not isinstance(cmd, click.Group):
            break
        if word not in cmd.commands:
            return None
        cmd = cmd.commands[word]
    return cmd


def test_every_command_in_the_readme_exists_with_its_options() -> None:
    text = (REPO / "README.md").read_text()
    lines = [ln.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for ln in block.splitlines() if ln.strip().startswith("edgenas ")]
    assert len(lines) >= 10
    for line in lines:
        words = shlex.split(line.split("#")[0].replace("$(", "").replace(")", ""))[1:]
        cmd = _resolve(words)
        assert cmd is not None, f"README names a command that does not exist: {line}"
        known = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        known |= {opt for p in main.params for opt in getattr(p, "opts", [])}
        for word in words:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{line}: unknown option {word}"


def test_benchmarks_readme_is_generated_from_the_result_files() -> None:
    """Measured tables live in benchmarks/results/*.json; their README is generated, never edited."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_readme", REPO / "benchmarks" / "readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (REPO / "benchmarks" / "README.md").read_text()
    assert committed == module.render(), (
        "benchmarks/README.md is stale: run `.venv/bin/python benchmarks/readme.py`")
