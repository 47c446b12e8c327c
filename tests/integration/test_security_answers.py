"""Issue 24, findings 5, 9, 11 and 12: what a device answers is checked field by field before it is
stored (5), device text never reaches the terminal raw (9), torch is new enough for ``weights_only``
loading to hold (11), and ``bench`` keeps the mode of the manifest it rewrites (12).

The lying device is a real local device in a real workspace whose "Python" is a shell script: it
answers the runner verbs a test scripted (``<verb>.out``, exit code in ``<verb>.rc``) and runs the real
interpreter for everything else, so the uploads, the device lock, the job wrapper and the host's
parsing, storing and printing are all the real ones.  Model folders are real edgenas packages
(``ModelPackage.write``); the scripted device never loads them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from edgenas.core.text import printable
from edgenas.device import answers
from edgenas.device.registry import get_device
from edgenas.device.session import DeviceSession, RunnerError
from edgenas.export.package import ModelPackage
from edgenas.measure.bench import bench_model
from edgenas.records.store import open_store
from tests.support.cli_runner import Cli

pytestmark = pytest.mark.usefixtures("user_home")

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # "write `rm -rf ~` to the operator's clipboard"
C1_CSI = "\x9b2J"  # clear the screen, with the single-character (C1) CSI
RAW_CONTROL = ("\x1b", "\x07", "\x9b", "\r")


# ------------------------------------------------------------------------------------------ fixtures


class LyingDevice:
    """A local device whose runner answers what the test scripts (see the module docstring)."""

    def __init__(self, home: Path, root: Path, name: str = "liar") -> None:
        self.home, self.name = home, name
        self.answers = root / "answers"
        self.answers.mkdir(parents=True)
        self.workdir = root / "workdir"
        python = root / "python"
        python.write_text(
            "#!/bin/sh\n"
            "# $1 is runner.pyz, $2 the runner verb; anything unscripted runs the real interpreter\n"
            f'a="{self.answers}/$2"\n'
            'if [ -n "$2" ] && [ -f "$a.out" ]; then\n'
            '  cat "$a.out"; [ -f "$a.rc" ] && exit "$(cat "$a.rc")"; exit 0\n'
            "fi\n"
            f'exec "{PYTHON}" "$@"\n')
        python.chmod(0o755)
        Cli(home)("device", "add", name, "--local", "--workdir", str(self.workdir),
                  "--python", str(python))

    def answer(self, verb: str, data: object, rc: int = 0) -> None:
        """The runner's next ``verb`` prints ``data`` (JSON unless already text) and exits ``rc``."""
        text = data if isinstance(data, str) else json.dumps(data)
        (self.answers / f"{verb}.out").write_text(text + "\n")
        (self.answers / f"{verb}.rc").write_text(str(rc))

    def session(self) -> DeviceSession:
        with open_store(self.home) as store:
            return DeviceSession(self.home, get_device(store, self.name))


def _blob() -> bytes:
    """Bytes that pass every host-side check of a model file (the TFL3 identifier, the sha256)."""
    return b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4


def make_model(folder: Path) -> ModelPackage:
    manifest = {
        "name": "net", "arch": "r16-k3", "space": "runner-test", "precision": "fp32",
        "labels": ["cat", "dog", "eel"],
        "input": {"size": 16, "layout": "NHWC", "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
        "model": {"file": "model.tflite"},
        "latency": {},
    }
    return ModelPackage.write(folder, manifest, model=_blob())


def good_answer(sha256: str, **changes: object) -> dict:
    """A bench answer as the runner gives it (docs/runner.md, "bench JSON")."""
    answer = {
        "command": "bench", "median_ms": 1.5, "p90_ms": 1.75, "mean_ms": 1.55, "std_ms": 0.05,
        "min_ms": 1.4, "max_ms": 1.9, "cv": 0.032, "count": 10, "init_ms": 3.0,
        "first_inference_ms": 2.0, "times_ms": [1.5] * 10, "times_listed_all": True,
        "runtime": {"name": "litert", "module": "ai_edge_litert", "version": "1.2.0"},
        "model": {"path": "cache/models/x.tflite", "sha256": sha256, "size_bytes": 1034},
        "memory": {"peak_rss_kib": 51234},
        "state_before": {"cpufreq": [{"cpu": 0, "governor": "performance", "cur_khz": 1800000}],
                         "thermal": [{"zone": "thermal_zone0", "type": "cpu", "temp_c": 45.5}]},
        "state_after": {"cpufreq": [], "thermal": []},
    }
    answer.update(changes)
    return answer


@pytest.fixture
def liar(workspace: Path, tmp_path: Path) -> LyingDevice:
    return LyingDevice(workspace, tmp_path / "liar")


@pytest.fixture
def model(tmp_path: Path) -> ModelPackage:
    return make_model(tmp_path / "model")


def _rows(home: Path) -> int:
    with open_store(home) as store:
        return store.query("SELECT COUNT(*) AS n FROM measurements")[0]["n"]


def _bench(liar: LyingDevice, model: ModelPackage) -> dict:
    with open_store(liar.home) as store:
        return bench_model(store, liar.home, liar.name, model.folder, runs=3, min_secs=0.01,
                           retries=0)


# ------------------------------------------------------------------------------------------ finding 5


# (what the device answers instead of the good value, the field the error must name)
LIES = [
    ({"cv": "x"}, "cv"),
    ({"cv": 5.0}, "cv"),  # std/mean of 10 runs is at most sqrt(10)
    ({"p90_ms": {}}, "p90_ms"),
    ({"mean_ms": -5}, "mean_ms"),
    ({"p90_ms": 1e308}, "p90_ms"),
    ({"count": "x"}, "count"),
    ({"count": 10.0}, "count"),
    ({"count": True}, "count"),
    ({"memory": {"peak_rss_kib": "lots"}}, "memory.peak_rss_kib"),
    ({"memory": "lots"}, "memory"),
    ({"median_ms": math.nan}, "median_ms"),
    ({"median_ms": None}, "median_ms"),
    ({"runtime": {"name": "litert" + OSC52, "version": "1"}}, "runtime.name"),
    ({"runtime": {"name": "x" * 65}}, "runtime.name"),
    ({"runtime": ["litert"]}, "runtime"),
    ({"state_before": {"cpufreq": "all of them"}}, "state_before.cpufreq"),
    ({"state_before": {"cpufreq": [{"cur_khz": "fast"}]}}, "state_before.cpufreq[0].cur_khz"),
    ({"state_after": {"thermal": [{"temp_c": 1e9}]}}, "state_after.thermal[0].temp_c"),
    ({"model": {"sha256": "../../etc/passwd"}}, "model.sha256"),
]


@pytest.mark.parametrize(("lie", "field"), LIES, ids=[f for _, f in LIES])
def test_every_field_of_a_bench_answer_is_type_and_range_checked(lie, field):
    sha = "a" * 64
    assert answers.bench_answer("pi", good_answer(sha), sha256=sha)["median_ms"] == 1.5
    with pytest.raises(RunnerError, match=rf"^pi: .*invalid {re.escape(field)}\b"):
        answers.bench_answer("pi", good_answer(sha, **lie), sha256=sha)


def test_a_lying_device_fails_its_own_benchmark_and_stores_nothing(liar, model):
    """Through the real bench path: each lie is one clear error naming the device and the field, and
    no row reaches the class's shared measurements.  (Before: ``cv: "x"`` and ``p90_ms: {}`` were
    tracebacks, ``mean_ms: -5`` and ``count: "x"`` were stored.)"""
    for lie, field in LIES:
        liar.answer("bench", good_answer(model.sha256, **lie))
        with pytest.raises(RunnerError) as err:
            _bench(liar, model)
        assert str(err.value).startswith("liar: ") and field in str(err.value), (lie, err.value)
        assert "\x1b" not in str(err.value)
    assert _rows(liar.home) == 0
    liar.answer("bench", good_answer(model.sha256))  # the same device telling the truth is stored
    rec = _bench(liar, model)
    assert (rec["median_ms"], rec["runs"], rec["peak_rss_kib"], rec["runtime"]) == (1.5, 10, 51234,
                                                                                   "litert")
    assert rec["governor"] == "performance" and rec["freq_mhz_before"] == 1800.0
    assert _rows(liar.home) == 1


def test_an_answer_nested_100000_deep_is_refused_not_a_recursion_error(liar, model):
    deep = '{"median_ms": 1.5, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert answers.depth(deep) == 100_001
    assert answers.depth('{"a": "[[[[[[", "b": [{"c": "]]}"}]}') == 3  # brackets in strings: text
    with pytest.raises(RunnerError, match="nested 100001 levels deep"):
        answers.parse_answer("pi", "warming up\n" + deep + "\n", "bench")
    liar.answer("bench", deep)
    with pytest.raises(RunnerError, match=r"^liar: the runner's bench answer is nested 100001 levels"):
        _bench(liar, model)
    assert _rows(liar.home) == 0
    # the bound is the answer's depth, not its size: the runner's real answers are 4 deep
    assert answers.parse_answer("pi", json.dumps(good_answer("a" * 64)), "bench")["count"] == 10


def test_a_predict_answer_is_checked_before_it_is_printed(liar, model, tmp_path):
    from edgenas.fleet.predict import input_file, predict_package

    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((16, 16, 3), np.float32))
    entry = {"index": 1, "label": "dog", "probability": 0.9, "score": 2.0}
    good = {"command": "predict", "precision": "fp32", "runtime": {"name": "litert"},
            "output": {"softmax_applied": True}, "predictions": [{"top_k": [entry]}]}
    lies = [({"probability": "x"}, "probability"), ({"probability": 7.0}, "probability"),
            ({"label": OSC52}, "label"), ({"index": "1"}, "index"), ({"score": math.inf}, "score")]
    with liar.session() as session:
        for change, field in lies:
            liar.answer("predict", {**good, "predictions": [{"top_k": [{**entry, **change}]}]})
            where = rf"predictions\[0\]\.top_k\[0\]\.{field}"
            with pytest.raises(RunnerError, match=rf"^liar: .*invalid {where}"):
                predict_package(session, model.model_path, model.sha256, model.manifest_path,
                                input_file(sample), top_k=3)
        liar.answer("predict", {**good, "predictions": [{"top_k": [entry] * 4}]})
        with pytest.raises(RunnerError, match="4 entries for top-k 3"):
            predict_package(session, model.model_path, model.sha256, model.manifest_path,
                            input_file(sample), top_k=3)
        liar.answer("predict", good)
        report = predict_package(session, model.model_path, model.sha256, model.manifest_path,
                                 input_file(sample), top_k=3)
    assert report["predictions"][0]["top_k"][0]["label"] == "dog"


# ------------------------------------------------------------------------------------------ finding 9


def test_printable_escapes_every_control_character_and_keeps_the_rest():
    assert printable("aarch64" + OSC52) == "aarch64\\x1b]52;c;cm0gLXJmIH4K\\x07"
    assert printable(C1_CSI + "\x7f\u202eok\r\n\t") == "\\x9b2J\\x7f\\u202eok\\x0d\\x0a\\x09"
    assert printable("line 1\n\tline 2\r", multiline=True) == "line 1\n\tline 2\\x0d"
    assert printable("Cortex-A72 · 1.8 GHz – 45 °C …") == "Cortex-A72 · 1.8 GHz – 45 °C …"
    assert printable("x" * 100, limit=10) == "x" * 9 + "…"
    assert printable(None) == "None"


def test_device_text_reaches_the_terminal_escaped(liar, model):
    """A device whose probe facts, runtime name and error text carry OSC 52 (clipboard write), a C1
    CSI and a CR: ``device probe``, ``list``, ``show`` and a failing ``bench`` print them escaped —
    no ESC, BEL, CSI or CR byte reaches the terminal (before: all of them did)."""
    cli = Cli(liar.home)
    info = {
        "command": "info", "runtime": {"name": "litert", "version": "1.2.0"},
        "runtimes": {"litert": {"installed": True, "importable": True, "version": "1.2" + OSC52}},
        "python": {"version": "3.11.2" + C1_CSI, "executable": "/usr/bin/python3"},
        "device": {"arch": "aarch64" + OSC52, "cpu_model": "Cortex-A72\r FAKE", "os": "Debian" + C1_CSI,
                   "cores": 4, "mem_total_mib": 3906},
    }
    liar.answer("info", info)

    def run(*args: str, code: int = 0) -> str:
        out = cli(*args, code=code)
        assert not [c for c in RAW_CONTROL if c in out], out
        return out

    probed = run("device", "probe", liar.name)
    assert "aarch64\\x1b]52;c;" in probed and "Debian\\x9b2J" in probed
    assert "aarch64\\x1b]52;c;" in run("device", "list")
    assert "Cortex-A72\\x0d FAKE" in run("device", "show", liar.name)
    assert "\\u001b]52" in run("device", "probe", liar.name, "--json")
    liar.answer("bench", {"error": "cannot load model" + OSC52, "kind": "model_corrupt"}, rc=1)
    assert ("error: liar: the runner's bench failed (exit 1): cannot load model\\x1b]52"
            in run("bench", str(model.folder), "--device", liar.name, code=1))
    liar.answer("bench", good_answer(model.sha256, runtime={"name": "lite" + OSC52}))
    refused = run("bench", str(model.folder), "--device", liar.name, code=1)
    assert "invalid runtime.name" in refused and "\\u001b]52" in refused
    assert _rows(liar.home) == 0


def test_log_lines_and_table_cells_escape_device_text(capsys):
    import logging

    from edgenas.cli.common import setup_logging, table

    cell = table(["device", "arch"], [["pi", "aarch64" + OSC52 + "\nfake row"]])
    assert "\x1b" not in cell and len(cell.splitlines()) == 3 and "\\x0afake row" in cell
    setup_logging(logging.WARNING)
    logging.getLogger("edgenas.measure.bench").warning("stderr tail: %s", "oops" + OSC52 + C1_CSI)
    err = capsys.readouterr().err
    assert "warning: stderr tail: oops\\x1b]52" in err and not [c for c in RAW_CONTROL if c in err]


# ------------------------------------------------------------------------------------------ finding 11


def test_torch_requirement_excludes_the_versions_whose_weights_only_is_bypassable():
    """CVE-2025-32434: ``torch.load(weights_only=True)`` runs code from a crafted file before 2.6."""
    from packaging.requirements import Requirement

    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))
    torch = next(Requirement(r) for r in requires if Requirement(r).name == "torch")
    assert not any(torch.specifier.contains(v) for v in ("2.2.0", "2.5.1", "2.6.0rc1")), torch
    assert torch.specifier.contains("2.6.0") and torch.specifier.contains("2.13.0")
    pinned = [ln for ln in (REPO / "requirements.txt").read_text().splitlines()
              if ln.startswith("torch==")]
    assert pinned and all(torch.specifier.contains(ln.split("==")[1]) for ln in pinned)


# ------------------------------------------------------------------------------------------ finding 12


def test_bench_keeps_the_mode_of_the_manifest_it_rewrites(liar, model, tmp_path):
    """A shared model folder's 0644 manifest stays 0644 after ``bench`` records its latency in it
    (before: 0600, and every other reader of the folder lost it)."""
    os.chmod(model.manifest_path, 0o644)
    liar.answer("bench", good_answer(model.sha256))
    _bench(liar, model)
    data = json.loads(model.manifest_path.read_text())
    assert data["latency"][liar.name]["median_ms"] == 1.5  # the manifest was rewritten...
    assert stat.S_IMODE(model.manifest_path.stat().st_mode) == 0o644  # ...and kept its mode
    # the package writer keeps an existing file's mode too (without set-id bits); new files stay 0600
    os.chmod(model.manifest_path, 0o640)
    ModelPackage.write(model.folder, ModelPackage.load(model.folder).data)
    assert stat.S_IMODE(model.manifest_path.stat().st_mode) == 0o640
    fresh = make_model(tmp_path / "fresh")
    assert stat.S_IMODE(fresh.manifest_path.stat().st_mode) == 0o600
    assert hashlib.sha256(fresh.model_path.read_bytes()).hexdigest() == fresh.sha256
