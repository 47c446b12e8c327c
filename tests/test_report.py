"""The HTML report, rendered by headless Chromium: key sections exist and every plot decodes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from edgenas.report import ReportInputs, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render_dom(path, tmp_path) -> str:
    """The DOM after load, as Chromium sees it (flags as this machine needs them offline)."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run `make test` as root (it installs it) or "
                    "`apt-get install chromium`")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}",
         "--virtual-time-budget=3000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def inputs(tmp_path) -> ReportInputs:
    log = tmp_path / "train.log.jsonl"
    log.write_text("\n".join(json.dumps({"event": "step", "phase": ph, "step": i, "loss": 3 - i / 50})
                             for i, ph in enumerate(["full"] * 20 + ["kernel"] * 20)))
    cand = {"arch": "r32-3434-3434-3434-3434-3434", "accuracy": 0.9,
            "latency_ms": {"local": 1.2}, "measured_ms": {"local": 1.25}, "size_kb": 300}
    search = {"constraints": {"latency_ms": 1.5}, "objective": "accuracy",
              "evaluated": [cand, dict(cand, accuracy=0.8, latency_ms={"local": 0.9})],
              "front": [cand], "verified": [cand], "chosen": cand}
    manifest = {"arch": cand["arch"], "space": "mbv3-tiny", "precision": "int8", "macs": 2e6,
                "params": 1e5, "model": {"bytes": 300000, "sha256": "ab" * 32},
                "input": {"size": 32, "mean": [0.3] * 3, "std": [0.3] * 3, "dtype": "int8",
                          "quantization": {"scale": 0.02, "zero_point": -3}},
                "labels": [str(i) for i in range(10)],
                "accuracy": {"samples": 359, "float_top1": 0.91, "exported_top1": 0.9},
                "latency": {"local": {"median_ms": 1.25, "p90_ms": 1.3, "cv": 0.01}}}
    return ReportInputs(train_logs=[log], search=search,
                        predictor_points={"local/int8": [(1.0, 1.05), (2.0, 1.9)]},
                        predictor_quality={"local/int8": {"within_10": 1.0}},
                        models=[manifest], fleet=[{"device": "local", "status": "ok"}],
                        summary=[("chosen arch", cand["arch"])])


def test_report_renders_with_every_section(tmp_path) -> None:
    out = write_report(inputs(tmp_path), tmp_path / "report.html")
    assert sorted(p.name for p in (tmp_path / "report_files").iterdir()) == [
        "pareto.png", "predictor.png", "training.png"]
    dom = render_dom(out, tmp_path)
    for element in ("training-curve", "pareto-plot", "predictor-plot", "model-card", "fleet",
                    "summary"):
        assert f'id="{element}"' in dom, element
    assert re.search(r'data-images-loaded="3"', dom), "not every plot decoded in the browser"
    assert "r32-3434-3434-3434-3434-3434" in dom and "90.00%" in dom


def test_empty_workspace_report_says_what_to_run(tmp_path) -> None:
    out = write_report(ReportInputs(), tmp_path / "empty.html")
    dom = render_dom(out, tmp_path)
    assert "edgenas supernet train" in dom and "edgenas fleet push" in dom
    assert 'data-images-loaded="0"' in dom
