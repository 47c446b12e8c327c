"""The HTML report, rendered by headless Chromium: key sections exist and every plot decodes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from edgenas.workflows.report import ReportInputs, write_report

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


def test_fleet_by_device_class_section(workspace, tmp_path, request) -> None:
    """A real workspace: local devices in three classes, a real model pushed and benchmarked, and a
    `fleet specialize` state file (one class finished, one half-way, as the command writes it)."""
    from pathlib import Path

    from tests.support import fleet_models, runner_models
    from tests.support.cli_runner import Cli

    python = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python")
    src = runner_models.cached_models(Path(request.config.cache.mkdir("runner_models")))
    model = fleet_models.make_model_dir(tmp_path / "net", src["fp32"], name="net", precision="fp32",
                                        extra={"search": {"latency_ms": {"pi4": 0.5},
                                                          "error": {"pi4": 0.25}}})
    cli = Cli(workspace)
    for name, cls in (("a1", "pi4"), ("a2", "pi4"), ("b1", "pi5"), ("lone", None),
                      *((f"z{i}", "pi3") for i in range(8))):
        cli("device", "add", name, "--local", "--workdir", str(tmp_path / name), "--python", python,
            *(("--class", cls) if cls else ()))
    cli("fleet", "push", str(model), "--device", "a1", "--device", "a2", "--device", "b1")
    bench = cli.json("fleet", "bench", "--device", "a1", "--device", "a2", "--name", "net",
                     "--runs", "10", "--min-secs", "0.1")
    version = bench["rows"][0]["version"]
    state = workspace / "specialize" / "lab" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"group": "lab", "updated": "2026-12-01T07:58:04Z", "classes": {
        "pi4": {"devices": ["a1", "a2"], "representative": "a1", "precision": "int8",
                "budget_ms": 0.5600130001766956, "arch": "r32-3434-3434-3434-3434-3434",
                "accuracy": 0.7123, "promised_ms": 0.5012, "measured_ms": {"a1": 0.49876, "a2": 0.51},
                "status": "ok", "model_dir": "/x", "steps": {"measure": {}, "search": {}}},
        "pi5": {"devices": ["b1"], "steps": {"measure": {"at": 1.0}}},  # written half-way
        "bad": "not a class entry"}}))
    cli("report", "--out", str(tmp_path / "r.html"))
    dom = render_dom(tmp_path / "r.html", tmp_path)
    section = dom[dom.index('id="fleet-classes"'):]
    assert "<td>pi4</td><td>set by the user</td><td>2: a1, a2</td>" in section
    assert f"<td>net {version}</td><td>0.5 ms ±25.0 %</td>" in section
    assert re.search(r"<td>[0-9.e-]+ ms \([+-]\d+\.\d %\), 2 devices, 20\d\d-\d\d-\d\d \d\d:\d\d</td>",
                     section), section[:3000]
    assert re.search(r"<td>(ok|drift on a[12](, a2)?)</td>", section)  # vs ±25 % of 0.5 ms
    # pi5 runs the same model, but the promise is pi4's and no device of pi5 was measured
    assert (f"<td>pi5</td><td>set by the user</td><td>1: b1</td><td>net {version}</td><td>–</td>"
            "<td>–</td><td>not measured yet (no promise)</td>") in section
    assert "not probed yet: a class of its own" in section and "nothing deployed" in section
    assert "8: z0, z1, z2, z3, z4, z5 … and 2 more" in section
    spec = section[section.index('id="specialize-lab"'):]
    assert ("<td>pi4</td><td>2: a1, a2</td><td>a1</td><td>≤ 0.56 ms</td>"
            "<td>r32-3434-3434-3434-3434-3434</td><td>int8</td><td>71.2 %</td><td>0.501 ms</td>"
            "<td>a1 0.499 ms, a2 0.51 ms</td><td>ok</td>") in spec
    assert "<td>pi5</td><td>1: b1</td><td>–</td><td>–</td>" in spec
    assert "in progress (measure done)" in spec and "not a class entry" not in spec
    assert "{" not in section.split("<script>")[0] and "0.5600130001766956" not in dom
