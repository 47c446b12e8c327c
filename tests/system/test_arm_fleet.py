"""Emulated Raspberry Pis in the test fleet (tests/support/fleet/arm.py): real ARM runtimes over real
SSH.

pi64 runs the aarch64 ai-edge-litert wheel on a Cortex-A72, pi5 the same on a Cortex-A76, pi32 the
armv7l tflite-runtime wheel with Debian's armhf numpy 1.24 on a Cortex-A7; each Python runs under
qemu-user while the login shell stays native x86.  Everything device-side is driven through the
``edgenas`` CLI (whose interface is stable while the device layer is refactored) or by running the
runner over SSH.  Timings seen here describe the emulator, not a Pi: only the int8-vs-fp32 ordering
(XNNPACK's ARM int8 kernels beat its fp32 ones, the opposite of this x86 host) is asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from edgenas import build_supernet
from edgenas.training.data import load_data
from tests.support import runner_models
from tests.support.cache import build_once
from tests.support.cli_runner import Cli
from tests.support.fleet import arm
from tests.support.fleet.sshd import SSHDevice
from tests.support.fleet_models import make_model_dir

pytestmark = [pytest.mark.fleet]

REPO = Path(__file__).resolve().parents[2]
MODEL_CACHE = REPO / ".cache" / "arm-fleet-models"
HOST_PYTHON = {"litert": REPO / ".venv" / "bin" / "python",
               "tflite_runtime": REPO / ".venv-tflite" / "bin" / "python"}
RUNTIME = {"pi64": ("litert", "2.3.0"), "pi5": ("litert", "2.3.0"), "pi32": ("tflite_runtime", "2.14.0")}
NUMPY_MAJOR_MINOR = {"pi64": "2.4", "pi5": "2.4", "pi32": "1.24"}
# Short: emulated runs are slow (one warm-up run still precedes the timed ones).
BENCH = ("--runs", "5", "--min-secs", "0.1", "--warmup-secs", "0", "--cv-threshold", "1")
MODEL_KINDS = ("mbv3", "small")
# (device, model, precision) whose predictions are compared with the host's.  pi5 runs int8 only: its
# dot-product kernels are what differs from pi64.  pi32 (tflite-runtime 2.14 on armv7) runs the small
# net: on the random-weight mbv3-tiny its int8 scores land ~19 quantisation steps from x86
# tflite-runtime 2.14's (x86 LiteRT 2.3 vs x86 tflite-runtime 2.14 differ by ~15 steps on that net
# too) and its fp32 by 1.7e-5 of the logit range: small per-layer rounding differences amplified.
PREDICT = [("pi64", "mbv3", "fp32"), ("pi64", "mbv3", "int8"), ("pi5", "mbv3", "int8"),
           ("pi32", "small", "fp32"), ("pi32", "small", "int8")]


def ssh(dev: SSHDevice, command: str, *, stdin: bytes | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` on the device through the real OpenSSH client (its own login shell)."""
    argv = ["ssh", "-i", str(dev.client_key), "-p", str(dev.port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"{dev.user}@{dev.host}", command]
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (f"{dev.name}: `{command}` failed ({proc.returncode}): "
                                  f"{proc.stdout.decode()[-1000:]} {proc.stderr.decode()[-1000:]}")
    return proc


def put(dev: SSHDevice, local: Path, remote: str) -> None:
    """Upload through the SSH channel (``cat >``), as the device user."""
    ssh(dev, f"mkdir -p {shlex.quote(str(Path(remote).parent))} && cat > {shlex.quote(remote)}",
        stdin=local.read_bytes())


FACTS = r"""
import json, platform, sys
info = dict(machine=platform.machine(), executable=sys.executable, cpuinfo=open("/proc/cpuinfo").read())
import numpy
info["numpy"] = numpy.__version__
try:
    import ai_edge_litert.interpreter
    from importlib.metadata import version
    info["runtime"] = ["litert", version("ai-edge-litert")]
except ImportError:
    import tflite_runtime
    info["runtime"] = ["tflite_runtime", tflite_runtime.__version__]
print(json.dumps(info))
"""


# ------------------------------------------------------------------------------------------ fixtures


def _export_key() -> str:
    """Exports are reused while edgenas' own sources and the test model code are unchanged (a second
    ``make test`` does not pay a minute of TensorFlow conversion again)."""
    h = hashlib.sha256()
    support = REPO / "tests" / "support"
    files = [Path(__file__), support / "runner_models.py", support / "fleet_models.py",
             *sorted((REPO / "edgenas").rglob("*.py"))]
    for path in files:
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _build_models(root: Path) -> None:
    torch.manual_seed(0)
    data = load_data("digits", size=32)
    net = build_supernet("mbv3-tiny", 10, labels=data.labels, normalization=data.normalization)
    ckpt = net.save(root / "tiny.pt", meta={"data": {"source": "digits"}})
    cli = Cli(root / "ws")
    for precision in ("fp32", "int8"):
        cli("export", str(ckpt), "--arch", "min", "--precision", precision,
            "--calibration-samples", "32", "--out", str(root / "mbv3" / precision))
    src = runner_models.build(root / "keras")
    for precision in ("fp32", "int8"):
        make_model_dir(root / "small" / precision, src[precision], name="net", precision=precision)
    rng = np.random.default_rng(7)
    for kind in MODEL_KINDS:
        size = json.loads((root / kind / "fp32" / "manifest.json").read_text())["input"]["size"]
        np.save(root / kind / "x.npy", rng.standard_normal((4, size, size, 3)).astype(np.float32))


@pytest.fixture(scope="module")
def models() -> dict[str, dict[str, Path]]:
    """``mbv3``: mbv3-tiny's smallest subnet (random weights: outputs and timings do not need trained
    ones) exported by ``edgenas export`` as fp32 and int8; ``small``: the runner tests' four-layer
    Keras net (tests/runner_models.py); each with a batch of 4 inputs ``x``.  Cached under
    ``<repo>/.cache/arm-fleet-models/``."""
    cache = build_once(MODEL_CACHE / _export_key(), _build_models, prune_siblings=True)
    paths = {kind: {"fp32": cache / kind / "fp32", "int8": cache / kind / "int8",
                    "x": cache / kind / "x.npy"} for kind in MODEL_KINDS}
    return paths
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=MODEL_CACHE, prefix="build-"))
    try:
        _build_models(root)
        (root / "done").write_text("ok")
        for old in MODEL_CACHE.iterdir():  # exports of older sources
            if old.is_dir() and not old.name.startswith("build-"):
                shutil.rmtree(old, ignore_errors=True)
        os.rename(root, cache)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return paths


@pytest.fixture(scope="module")
def ws(arm_fleet, tmp_path_factory) -> Iterator[Cli]:
    """One workspace with pi64, pi5 and pi32 registered and set up through the CLI; $HOME is empty
    for the module so no real ~/.ssh leaks in."""
    root = tmp_path_factory.mktemp("armws")
    (root / "home" / ".ssh").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(root / "home"))
        cli = Cli(root / "ws")
        for name, dev in arm_fleet.ssh.items():
            cli("device", "add", name, "--ssh", dev.target, "--key", str(dev.client_key),
                "--python", dev.python, "--accept-new-host-key")
        cli("device", "setup", *arm_fleet.ssh)
        yield cli


# --------------------------------------------------------------------------------------------- tests


def test_sysroots_are_cached_and_keyed_by_the_recipe(arm_fleet):
    first = arm.ensure_built()
    again = arm.ensure_built()
    assert again.build_s == 0.0 and again.root == first.root, "a second build must come from the cache"
    assert again.root.name == arm.recipe_hash() and again.root.parent == arm.CACHE_ROOT
    assert 50e6 < again.bytes < 1e9, again.bytes
    for board in arm.BOARDS.values():
        text = again.python(board.name).read_text()
        assert f"-cpu {board.cpu}" in text and "-cpu max" not in text


# pi5 (the same wheel on an A76) is in the campaign tier here: pi64 covers the aarch64 path in the
# CI suite, which must stay within its time budget (`make test-all` runs pi5 too).
BOARDS_CI = ["pi64", pytest.param("pi5", marks=pytest.mark.campaign), "pi32"]


@pytest.mark.parametrize("name", BOARDS_CI)
def test_device_python_is_the_emulated_pi_and_its_shell_the_host(arm_fleet, name):
    dev = arm_fleet.ssh[name]
    board = arm.BOARDS[name]
    shell_arch = ssh(dev, "uname -m").stdout.decode().strip()
    assert shell_arch == "x86_64", "the login shell is native (only python3 runs under qemu)"
    facts = json.loads(ssh(dev, f"{shlex.quote(dev.python)} -c {shlex.quote(FACTS)}").stdout)
    assert facts["machine"] == board.machine
    assert facts["executable"] == dev.python, "children of the runner must go through the wrapper"
    assert f"CPU part\t: {board.cpu_part}" in facts["cpuinfo"]
    assert f"Model\t\t: {board.model}" in facts["cpuinfo"]
    assert "GenuineIntel" not in facts["cpuinfo"] and "AuthenticAMD" not in facts["cpuinfo"]
    assert list(facts["runtime"]) == list(RUNTIME[name])
    assert facts["numpy"].startswith(NUMPY_MAJOR_MINOR[name] + ".")


# pi5's probe (pi64's wheel and Python on an A76: only the cpuinfo differs) is in the campaign tier,
# as its other runs are: each probe is several emulated Python starts.
PROBE_BOARDS = [pytest.param(("pi64", "pi32"), id="pi64-pi32"),
                pytest.param(("pi5",), id="pi5", marks=pytest.mark.campaign)]


@pytest.mark.parametrize("names", PROBE_BOARDS)
def test_cli_probe_reports_the_emulated_pi_its_runtime_and_python(ws, names):
    """The facts must come from the on-device Python (qemu serves it the board's cpuinfo): the device's
    shell would say x86_64.  (Was an xfail until the lead's device-layer refactor landed.)"""
    probe = ws.json("device", "probe", *names)
    for name in names:
        runtime, version = RUNTIME[name]
        facts, board = probe[name], arm.BOARDS[name]
        assert facts["arch"] == board.machine, (name, facts.get("arch"))
        # From the board's cpuinfo (its "model name" on armv7, its Model on aarch64), not the host's.
        model = facts.get("cpu_model")
        assert model and model in board.cpuinfo, (name, model)
        # The runtime's name is "litert" or its module's, "ai_edge_litert", by schema version.
        assert facts["runtime"] in (runtime, "ai_edge_litert" if runtime == "litert" else runtime)
        assert facts["runtimes"][facts["runtime"]]["version"] == version
        assert str(facts["python_version"]).startswith("3.11")


# pi32's int8/fp32 runs in the campaign tier (the same property as pi64's, at several times its
# cost); make test keeps pi32's probe and predict, and this test on pi64.
BENCH_BOARDS_CI = ["pi64", *(pytest.param(b, marks=pytest.mark.campaign) for b in ("pi5", "pi32"))]


@pytest.mark.parametrize("name", BENCH_BOARDS_CI)
def test_cli_bench_int8_beats_fp32_on_the_emulated_arm(ws, models, name):
    """XNNPACK's ARM int8 kernels are faster than its fp32 ones (the opposite of this x86 host's).
    The numbers are emulator timings, not a Pi's; the ratio is printed for the record."""
    rec = {p: ws.json("bench", str(models["mbv3"][p]), "--device", name, *BENCH)
           for p in ("fp32", "int8")}
    for precision, r in rec.items():
        assert r["device"] == name and r["precision"] == precision, r
        assert r["runtime"] == RUNTIME[name][0] and r["runtime_version"] == RUNTIME[name][1]
        assert 0 < r["min_ms"] <= r["median_ms"]
    ratio = rec["fp32"]["median_ms"] / rec["int8"]["median_ms"]
    print(f"{name} (emulated, not a Pi): fp32 {rec['fp32']['median_ms']:.1f} ms, "
          f"int8 {rec['int8']['median_ms']:.1f} ms, fp32/int8 = {ratio:.2f}", file=sys.stderr)
    assert ratio > 1.0, f"{name}: int8 median not below fp32's (fp32/int8 = {ratio:.2f})"


def _scores(out: bytes) -> np.ndarray:
    """Per-sample scores (dequantised logits) by class index from ``runner.py predict`` JSON."""
    doc = json.loads(out)
    rows = []
    for pred in doc["predictions"]:
        by_index = {t["index"]: t["score"] for t in pred["top_k"]}
        rows.append([by_index[i] for i in range(len(by_index))])
    return np.array(rows, dtype=np.float64)


def _output_step(model: Path) -> float:
    """The int8 output's quantisation scale: one rounding step of a dequantised score."""
    from ai_edge_litert.interpreter import Interpreter

    return float(Interpreter(model_path=str(model)).get_output_details()[0]["quantization"][0])


def _installed_runner(dev: SSHDevice) -> Path:
    """The runner ``edgenas device setup`` put in the device's workdir (a zipapp, or a script)."""
    for name in ("runner.pyz", "runner.py"):
        if (dev.workdir / name).is_file():
            return dev.workdir / name
    raise AssertionError(f"{dev.name}: no runner in {dev.workdir} after `edgenas device setup`")


@pytest.fixture(scope="module")
def predictions(ws, arm_fleet, models,
                tmp_path_factory) -> dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]:
    """(device, model, precision) -> (device scores, host scores with the same runtime): the runner the
    CLI installed, run over SSH on the device and as the same file on the host.  Launches run two at
    a time: each is several seconds of emulated start-up."""
    installed = _installed_runner(arm_fleet.ssh["pi64"])
    host_runner = tmp_path_factory.mktemp("hostrunner") / installed.name
    shutil.copyfile(installed, host_runner)
    for name in {n for n, _, _ in PREDICT}:
        dev = arm_fleet.ssh[name]
        runner = _installed_runner(dev)
        assert runner.read_bytes() == host_runner.read_bytes()
        put(dev, runner, f"{dev.workdir}/armtest/{runner.name}")
        for kind in MODEL_KINDS:
            put(dev, models[kind]["x"], f"{dev.workdir}/armtest/{kind}/x.npy")
            for precision in ("fp32", "int8"):
                for f in ("model.tflite", "manifest.json"):
                    remote = f"{dev.workdir}/armtest/{kind}/{precision}/{f}"
                    put(dev, models[kind][precision] / f, remote)

    def run(key: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
        name, kind, precision = key
        dev = arm_fleet.ssh[name]
        d = f"{dev.workdir}/armtest"
        cmd = (f"cd {shlex.quote(d)} && {shlex.quote(dev.python)} {host_runner.name} predict "
               f"--top-k 10 {kind}/{precision}/model.tflite {kind}/x.npy")
        device = _scores(ssh(dev, cmd).stdout)
        host = subprocess.run(
            [str(HOST_PYTHON[RUNTIME[name][0]]), str(host_runner), "predict", "--top-k", "10",
             str(models[kind][precision] / "model.tflite"), str(models[kind]["x"])],
            capture_output=True, check=True, timeout=120)
        return device, _scores(host.stdout)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(PREDICT, pool.map(run, PREDICT)))


@pytest.mark.parametrize("key", PREDICT, ids=["-".join(k) for k in PREDICT])
def test_runner_predict_on_the_emulated_arm_matches_the_host(predictions, models, key):
    """fp32 within 1e-5 of the logit range (the ISAs accumulate in different orders); int8 a few
    quantisation steps apart at most and under one on average, against the same runtime on the
    host: XNNPACK's requantisation rounds differently on ARM and x86, a step at most per layer,
    and a step in an early layer can move a later one (the export is bit-reproducible, so which
    model this meets is fixed by the code, not by the run)."""
    name, kind, precision = key
    device, host = predictions[key]
    assert device.shape == host.shape and device.shape[0] == 4
    diff = float(np.abs(device - host).max())
    if precision == "fp32":
        bound = 1e-5 * max(1.0, float(np.abs(host).max()))
        assert diff <= bound, f"{key}: fp32 scores differ from the host's by {diff:.3g} > {bound:.3g}"
        print(f"{key}: max |device - host| = {diff:.3g}", file=sys.stderr)
    else:
        step = _output_step(models[kind]["int8"] / "model.tflite")
        mean = float(np.abs(device - host).mean())
        print(f"{key}: |device - host| max {diff / step:.2f}, mean {mean / step:.2f} quantisation "
              "steps", file=sys.stderr)
        assert diff <= step * 4.001, f"{key}: int8 scores differ by {diff / step:.2f} quantisation steps"
        assert mean <= step, f"{key}: int8 scores differ by {mean / step:.2f} steps on average"
