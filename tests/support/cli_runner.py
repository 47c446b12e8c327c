"""Run the edgenas CLI in-process against one workspace, asserting the exit code."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgenas.cli import main


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(main, ["--home", str(self.home), *args])
        assert result.exit_code == code, result.output + repr(result.exception)
        return result.output

    def json(self, *args: str, code: int = 0):
        """The command's ``--json`` output (the first JSON value in it)."""
        out = self(*args, "--json", code=code)
        start = min(i for i in (out.find("{"), out.find("[")) if i >= 0)
        return json.loads(out[start:out.rindex("}" if out[start] == "{" else "]") + 1])
