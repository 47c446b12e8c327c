"""Verbs that touch no model import neither torch nor TensorFlow (nor scikit-learn, matplotlib).

Why a subprocess: the test session itself has long imported torch, so ``sys.modules`` must be read in a
fresh interpreter.  One child runs the model-free verbs in order through the real CLI entry point on a
real workspace (local devices, the real SQLite store) and reports, after each verb, which heavy modules
it loaded; the first verb that pulls one in is named in the failure.  A second child runs a verb that
*does* load a model, to show that the check sees an import when one happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "tensorflow", "sklearn", "matplotlib")

# The verbs the issue names (device *, fleet status/history, measurements list, --help), each as it is
# typed; INVENTORY is replaced by an Ansible inventory of one local host.
MODEL_FREE_VERBS: list[list[str]] = [
    ["--help"],
    ["device", "--help"],
    ["device", "add", "pi", "--local"],
    ["device", "add", "pi2", "--local", "--group", "lab"],
    ["device", "list"],
    ["device", "list", "--json"],
    ["device", "show", "pi"],
    ["device", "group", "add", "lab", "pi"],
    ["device", "group", "remove", "lab", "pi"],
    ["device", "import", "INVENTORY"],
    ["device", "probe", "pi"],
    ["device", "check", "pi"],
    ["fleet", "status"],
    ["fleet", "history"],
    ["measurements", "list"],
    ["measurements", "export", "--json"],
    ["device", "remove", "pi2"],
]

_CHILD = r"""
import json, sys
from edgenas.cli import main
heavy = {heavy!r}
report = []
for argv in json.loads(sys.argv[1]):
    try:
        main(["--home", sys.argv[2], *argv], prog_name="edgenas", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # a verb that fails still must not have imported a model library
        code = repr(exc)
    report.append({{"argv": argv, "code": code, "loaded": [m for m in heavy if m in sys.modules]}})
sys.stdout.write("\nREPORT " + json.dumps(report) + "\n")
"""


def _run_child(home: Path, verbs: list[list[str]]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("EDGENAS_HOME", None)
    res = subprocess.run(
        [sys.executable, "-c", _CHILD.format(heavy=HEAVY), json.dumps(verbs), str(home)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("REPORT ")), None)
    assert line is not None, f"child failed (rc {res.returncode}): {res.stderr[-3000:]}"
    return json.loads(line[len("REPORT "):])


def test_model_free_verbs_import_no_model_library(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    box:\n      ansible_connection: local\n")
    verbs = [[str(inventory) if a == "INVENTORY" else a for a in argv] for argv in MODEL_FREE_VERBS]
    report = _run_child(tmp_path / "home", verbs)
    assert [r["argv"] for r in report] == verbs
    for row in report:
        assert row["loaded"] == [], f"`edgenas {' '.join(row['argv'])}` imported {row['loaded']}"
    # Every verb did its work: one that crashed early would pass the import check for nothing.
    failed = {" ".join(r["argv"]): r["code"] for r in report if r["code"] != 0}
    assert failed == {}
    assert (tmp_path / "home" / "edgenas.db").is_file()


def test_the_check_sees_a_model_import(tmp_path: Path) -> None:
    """``supernet info`` loads a checkpoint, so torch is imported even for a missing file: the probe
    above would notice the same in a model-free verb."""
    report = _run_child(tmp_path / "home", [["supernet", "info", str(tmp_path / "missing.pt")]])
    assert "torch" in report[0]["loaded"]
