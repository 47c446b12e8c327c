"""`edgenas quickstart` end to end with a tiny budget: every artifact exists and agrees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgenas.core.files import sha256_file
from edgenas.export.pipeline import read_manifest
from edgenas.records.store import open_store
from tests.support.cli_runner import Cli

EDGENAS = str(Path(sys.executable).parent / "edgenas")
ARGS = ["quickstart", "--minutes", "0.1", "--samples", "8", "--accuracy-samples", "8",
        "--limit", "300", "--json"]


def run_quickstart(home: Path) -> tuple[dict, float]:
    start = time.monotonic()
    proc = subprocess.run([EDGENAS, "--home", str(home), *ARGS], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), time.monotonic() - start


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("qs")
    summary, seconds = run_quickstart(home)
    return home, summary, seconds


def test_artifacts_exist_and_agree(first_run) -> None:
    home, summary, _ = first_run
    root = home / "quickstart"
    chosen = summary["chosen"]
    search = json.loads((root / "search" / "search.json").read_text())
    searched = search["precision"]["local"]
    for precision in ("int8", "fp32"):
        manifest = read_manifest(root / "models" / precision)  # verifies the sha256 too
        assert manifest["arch"] == chosen and manifest["precision"] == precision
        assert manifest["model"]["sha256"] == sha256_file(root / "models" / precision /
                                                          "model.tflite")
        assert manifest["provenance"]["source_sha256"] == sha256_file(root / "supernet.pt")
        if precision == searched:  # the search promised latency for the precision it chose
            assert manifest["search"]["latency_ms"]["local"] > 0
            assert manifest["search"]["error"]["local"] >= 0
        assert manifest["latency"]["local"]["median_ms"] > 0
        assert 0.0 <= manifest["accuracy"]["exported_top1"] <= 1.0
    assert search["chosen"]["arch"] == chosen
    assert search["constraints"]["latency_ms"] == pytest.approx(summary["budget_ms"])
    with open_store(home) as store:
        rows = store.query("SELECT precision, median_ms FROM measurements WHERE device = 'local'"
                           " AND arch = ?", (chosen,))
        measured = {p for p, _ in rows}
        assert {"int8", "fp32"} <= measured  # the chosen arch's latency is stored
        deployed = store.query("SELECT status, sha256 FROM deployments WHERE device = 'local'")
        evaluated = store.query("SELECT DISTINCT data FROM accuracy_evals")
    # --limit reached the accuracy evaluations, which say so: never reused as full-set ones
    assert [d for d, in evaluated] == ["digits (first 300 training images)"], evaluated
    assert deployed and deployed[-1][0] in ("ok", "unchanged")
    assert deployed[-1][1] == summary["int8"]["manifest"]["model"]["sha256"]
    report = (home / "report.html").read_text()
    for plot in ("training.png", "pareto.png", "predictor.png"):
        assert f"report_files/{plot}" in report and (home / "report_files" / plot).stat().st_size
    assert chosen in report


def test_rerun_reuses_everything(first_run) -> None:
    home, summary, _ = first_run
    ckpt = home / "quickstart" / "supernet.pt"
    root = home / "quickstart"
    made = [ckpt, root / "search" / "search.json",
            *sorted((root / "models").glob("*/model.tflite"))]
    assert len(made) == 4
    mtimes = [p.stat().st_mtime_ns for p in made]
    again, _ = run_quickstart(home)
    assert again["chosen"] == summary["chosen"]
    # not retrained, not searched again, not re-exported: every artifact is the first run's file
    assert [p.stat().st_mtime_ns for p in made] == mtimes
    assert again["int8"]["manifest"]["model"]["sha256"] == \
        summary["int8"]["manifest"]["model"]["sha256"]


def test_evaluate_reproduces_the_exported_accuracy_on_host_and_device(first_run) -> None:
    """On the host, ``evaluate`` runs the kernels the export validated with (TFLite's built-in
    ones) and reproduces the recorded top-1 exactly.  On a device it runs the device's default
    (XNNPACK here): the local device must agree exactly with the host running those kernels."""
    from edgenas.export.convert import run_tflite
    from edgenas.export.package import ModelPackage
    from edgenas.workflows.evaluate_model import _validation

    home, _, _ = first_run
    for precision in ("int8", "fp32"):
        model = home / "quickstart" / "models" / precision
        recorded = read_manifest(model)["accuracy"]["exported_top1"]
        images, labels, _ = _validation(ModelPackage.load(model), None)
        delegated = float((run_tflite(str(model / "model.tflite"), images).argmax(1)
                           == labels).mean())
        for where, want in (([], recorded), (["--device", "local"], delegated)):
            # in this process: the rerun above is the CLI's
            result = Cli(home).json("evaluate", str(model), *where)
            assert result["images"] == len(labels) > 0, result
            assert result["top1"] == pytest.approx(want, abs=1e-9), (where, result)
            assert result["recorded_exported_top1"] == recorded
            assert result["where"] == (where[1] if where else "host")
