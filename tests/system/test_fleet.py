"""``edgenas fleet`` on the real test fleet: SSH devices (LiteRT, tflite-runtime, a CPU-starved one, a
victim for faults) and ADB devices behind the real adb server.

What must hold: a push reaches every device or leaves it on its previous version; a device killed in the
middle of an upload keeps its previous version intact and usable and a re-run completes it; a slowed
link still completes; a full disk is a clear error with the previous version still current; rollback
restores the previous sha everywhere; a second push of the same model transfers nothing.
"""

from __future__ import annotations

import glob
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgenas.export.package import ModelPackage
from tests.support import fleet_models
from tests.support.cli_runner import Cli
from tests.support.fleet.disk import small_fs, sshd_pid

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("user_home")]


@pytest.fixture(scope="module")
def models(request, tmp_path_factory) -> dict[str, Path]:
    cache = Path(request.config.cache.mkdir("runner_models"))
    return fleet_models.model_set(tmp_path_factory.mktemp("fleet-models"), cache)


@pytest.fixture
def cli(workspace: Path) -> Cli:
    return Cli(workspace)


def register(cli: Cli, fleet, names: list[str], wd: str, group: str,
             timeout: str = "10") -> dict[str, Path]:
    """Add fleet devices with workdir ``wd``; returns each device's workdir as seen from the host."""
    where = {}
    for name in names:
        if name in fleet.ssh:
            dev = fleet.ssh[name]
            cli("device", "add", name, "--ssh", dev.target, "--key", str(dev.client_key), "--python",
                dev.python, "--workdir", wd, "--accept-new-host-key", "--group", group)
            where[name] = dev.home / wd
        else:
            dev = fleet.adb[name]
            cli("device", "add", name, "--adb", dev.serial, "--python", dev.python, "--workdir",
                str(dev.root / wd), "--group", group, "--timeout", timeout)
            where[name] = dev.root / wd
    return where


def results(out: dict) -> dict[str, dict]:
    return {r["device"]: r for r in out["results"]}


def test_push_status_rollback_predict_on_six_devices(fleet, cli, models, tmp_path):
    names = ["adb1", "adb2", "slow", "ssh1", "ssh2", "victim"]
    where = register(cli, fleet, names, "fleet-main", "lab")
    v1, v2 = ModelPackage.open(models["v1"]), ModelPackage.open(models["v2"])

    out = cli.json("fleet", "push", str(models["v1"]), "--group", "lab", "--parallel", "6")
    assert {n: r["status"] for n, r in results(out).items()} == dict.fromkeys(names, "ok")
    for name in names:
        cur = where[name] / "models" / "net" / "current"
        assert fleet_models.sha(cur / "model.tflite") == v1.sha256

    # Idempotent: nothing is transferred, nothing is touched.
    inode = (where["ssh1"] / "models/net" / v1.version / "model.tflite").stat().st_ino
    again = cli.json("fleet", "push", str(models["v1"]), "--group", "lab")
    assert {(r["status"], r["bytes_sent"]) for r in again["results"]} == {("unchanged", 0)}
    assert (where["ssh1"] / "models/net" / v1.version / "model.tflite").stat().st_ino == inode

    table = cli("fleet", "push", str(models["v2"]), "--group", "lab")
    assert table.count(" ok ") == 6 and "push: 6 ok" in table
    status = cli.json("fleet", "status", "--group", "lab")
    assert {(r["device"], r["sha256"], r["previous"], r["drift"]) for r in status} == {
        (n, v2.sha256, v1.version, None) for n in names
    }

    # The tflite-runtime and LiteRT devices all run the new model end to end.
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((16, 16, 3), dtype=np.float32))
    pred = results(cli.json("fleet", "predict", str(x), "--group", "lab", "--top-k", "2"))
    assert {r["status"] for r in pred.values()} == {"ok"}
    assert {r["runtime"] for r in pred.values()} == {"litert", "tflite_runtime"}
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["label"] for r in pred.values())
    assert pred["ssh1"]["report"]["precision"] == "int8"

    out = cli.json("fleet", "rollback", "--group", "lab")
    assert {(n, r["status"], r["sha256"]) for n, r in results(out).items()} == {
        (n, "ok", v1.sha256) for n in names
    }
    status = cli.json("fleet", "status", "--group", "lab")
    assert {(r["sha256"], r["previous"], r["drift"]) for r in status} == {(v1.sha256, v2.version, None)}
    assert "DRIFT" not in cli("fleet", "status", "--group", "lab")


def test_device_killed_mid_push_keeps_its_previous_version(fleet, cli, models, tmp_path):
    victim = fleet.ssh["victim"]
    names = ["adb1", "ssh1", "ssh2", "victim"]
    where = register(cli, fleet, names, "fleet-kill", "k")
    v1, big = ModelPackage.open(models["v1"]), ModelPackage.open(models["big2"])
    cli("fleet", "push", str(models["v1"]), "--group", "k")

    killed = threading.Event()

    def kill_when_uploading() -> None:
        deadline = time.monotonic() + 60
        pattern = str(where["victim"] / "models/net/.incoming-*/.model.tflite.edgenas-tmp-*")
        while time.monotonic() < deadline:
            partial = glob.glob(pattern)
            if partial and Path(partial[0]).stat().st_size > 256 * 1024:
                victim.kill()
                killed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_uploading)
    try:
        with fleet.bandwidth(victim, "4mbit"):  # 4 MB takes ~8 s: the kill lands mid-upload
            killer.start()
            out = cli.json("fleet", "push", str(models["big2"]), "--group", "k", code=1)
            killer.join()
        assert killed.is_set(), "the upload finished before the device could be killed"
        got = results(out)
        assert {n: got[n]["status"] for n in names} == {"adb1": "ok", "ssh1": "ok", "ssh2": "ok",
                                                       "victim": "failed"}
        assert "previous version stays current" in got["victim"]["reason"]
        cur = where["victim"] / "models/net/current"
        assert cur.resolve().name == v1.version
        assert fleet_models.sha(cur / "model.tflite") == v1.sha256
    finally:
        if victim.proc is None or victim.proc.poll() is not None:
            victim.start()

    # Back up: the previous version is intact and runs; the workspace knows the push failed there.
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((16, 16, 3), np.float32))
    pred = cli.json("fleet", "predict", str(x), "--device", "victim")
    assert pred["results"][0]["status"] == "ok" and pred["results"][0]["version"] == v1.version
    history = cli.json("fleet", "history", "--device", "victim")
    assert history[0]["status"] == "failed" and history[0]["version"] == big.version

    again = results(cli.json("fleet", "push", str(models["big2"]), "--group", "k"))
    assert {n: r["status"] for n, r in again.items()} == {"adb1": "unchanged", "ssh1": "unchanged",
                                                          "ssh2": "unchanged", "victim": "ok"}
    assert again["victim"]["bytes_sent"] >= big.size
    assert not glob.glob(str(where["victim"] / "models/net/.incoming-*"))
    status = cli.json("fleet", "status", "--group", "k")
    assert {(r["sha256"], r["previous"], r["drift"]) for r in status} == {(big.sha256, v1.version, None)}


def test_push_over_a_slow_link_completes(fleet, cli, models):
    victim = fleet.ssh["victim"]
    register(cli, fleet, ["victim"], "fleet-slowlink", "s")
    big = ModelPackage.open(models["big1"])
    with fleet.bandwidth(victim, "16mbit"):
        t0 = time.monotonic()
        out = cli.json("fleet", "push", str(models["big1"]), "--device", "victim")
        elapsed = time.monotonic() - t0
    assert out["results"][0]["status"] == "ok"
    assert elapsed > big.size * 8 / 16e6 * 0.8  # the limit was really there: ≥ ~2 s for 4 MB
    status = cli.json("fleet", "status", "--device", "victim")
    assert status[0]["sha256"] == big.sha256 and status[0]["drift"] is None


def test_full_disk_is_a_clear_error_and_keeps_the_previous_version(fleet, cli, models):
    victim = fleet.ssh["victim"]
    v1 = ModelPackage.open(models["v1"])
    with small_fs(victim.home / "fleet-disk", "2m", owner=victim.user, mount_ns_pid=sshd_pid(victim)):
        register(cli, fleet, ["victim"], "fleet-disk", "d")
        cli("fleet", "push", str(models["v1"]), "--device", "victim")
        out = cli("fleet", "push", str(models["big1"]), "--device", "victim", code=1)
        assert "not enough space on the device" in out and "previous version stays current" in out
        status = cli.json("fleet", "status", "--device", "victim")
        assert (status[0]["version"], status[0]["sha256"], status[0]["drift"]) == (
            v1.version, v1.sha256, None)


def test_fleet_bench_measures_every_device_and_flags_drift(fleet, cli, models, tmp_path, workspace):
    pytest.importorskip("edgenas.measure.bench")
    names = ["adb1", "ssh1", "ssh2"]
    register(cli, fleet, names, "fleet-bench", "b")
    src = ModelPackage.open(models["v1"])
    promised = fleet_models.make_model_dir(  # the search promised ssh1 1 s: far off, so flagged
        tmp_path / "promised", src.model_path, name="net", precision="fp32",
        extra={"search": {"latency_ms": {"ssh1": 1000.0}, "error": {"ssh1": 0.1}}})
    cli("fleet", "push", str(promised), "--group", "b")
    png = tmp_path / "bench.png"
    out = cli.json("fleet", "bench", "--group", "b", "--runs", "5", "--min-secs", "0.05",
                   "--plot", str(png))
    rows = {r["device"]: r for r in out["rows"]}
    assert {n: rows[n]["runtime"] for n in names} == {
        "adb1": "tflite_runtime", "ssh1": "litert", "ssh2": "tflite_runtime"}
    assert all(rows[n]["median_ms"] > 0 and rows[n]["precision"] == "fp32" for n in names)
    assert rows["ssh1"]["drift"] and rows["ssh1"]["predicted_ms"] == 1000.0
    assert not rows["ssh2"]["drift"] and rows["ssh2"]["predicted_ms"] is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from edgenas.records.store import open_store

    with open_store(workspace) as store:
        stored = store.query("SELECT device FROM measurements WHERE campaign = ?", (out["campaign"],))
    assert sorted(r["device"] for r in stored) == names


def test_adb_device_killed_mid_push_keeps_its_previous_version(fleet, cli, models):
    phone = fleet.adb["adb2"]
    where = register(cli, fleet, ["adb2", "ssh1"], "fleet-adbkill", "p", timeout="3")
    v1, big = ModelPackage.open(models["v1"]), ModelPackage.open(models["big1"])
    cli("fleet", "push", str(models["v1"]), "--group", "p")
    killed = threading.Event()

    def kill_when_uploading() -> None:  # no tc on loopback: poll fast and kill at the first bytes
        pattern = str(where["adb2"] / "models/net/.incoming-*/.model.tflite.edgenas-tmp-*")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not glob.glob(pattern):
            time.sleep(0.002)
        phone.kill()
        killed.set()

    killer = threading.Thread(target=kill_when_uploading)
    killer.start()
    try:
        out = results(cli.json("fleet", "push", str(models["big1"]), "--group", "p", code=1))
        killer.join()
        assert killed.is_set()
        assert (out["adb2"]["status"], out["ssh1"]["status"]) == ("failed", "ok")
        assert "previous version stays current" in out["adb2"]["reason"], out["adb2"]["reason"]
        cur = where["adb2"] / "models/net/current"
        assert cur.resolve().name == v1.version and fleet_models.sha(cur / "model.tflite") == v1.sha256
    finally:
        killer.join()
        phone.start()
    again = results(cli.json("fleet", "push", str(models["big1"]), "--group", "p"))
    assert (again["adb2"]["status"], again["ssh1"]["status"]) == ("ok", "unchanged")
    status = cli.json("fleet", "status", "--group", "p")
    assert {(r["sha256"], r["drift"]) for r in status} == {(big.sha256, None)}


def test_ssh_upload_is_checked_on_the_device_against_the_given_sha256(fleet, workspace, tmp_path):
    """A push hands the transport the sha256 its package records (no hashing pass on the host); the
    device checks the bytes it received against it: a mismatch leaves nothing under the final name
    and no temporary file.  The connection prefers AES-GCM (cheaper per packet for the host)."""
    import hashlib

    from edgenas.core.errors import TransportError
    from edgenas.device.transports.ssh import SSHTransport

    dev = fleet.ssh["ssh1"]
    sub = f"edgenas/putknown-{time.monotonic_ns()}"
    src = tmp_path / "m.bin"
    src.write_bytes(np.random.default_rng(0).bytes(300_000))
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    t = SSHTransport(dev.name, dev.host, dev.port, dev.user, str(dev.client_key),
                     known_hosts=workspace / "known_hosts", workdir=sub, accept_new_host_key=True)
    root = dev.home / sub
    try:
        assert t.run(["mkdir", "-p", t.remote_path(".")]).rc == 0
        assert t.connect().get_transport().remote_cipher == "aes128-gcm@openssh.com"
        with pytest.raises(TransportError, match="sha256 differs.*nothing was written"):
            t.put_known(src, "m.bin", "0" * 64)
        assert sorted(p.name for p in root.iterdir()) == []
        t.put_known(src, "m.bin", good)
        assert (root / "m.bin").read_bytes() == src.read_bytes()
        assert sorted(p.name for p in root.iterdir()) == ["m.bin"]
    finally:
        t.run(["rm", "-rf", t.remote_path(".")])
        t.close()
