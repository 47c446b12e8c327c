"""``edgenas bench`` and measurement campaigns against the real fleet, the real runner and real TFLite.

The run's tiny mbv3-tiny supernet with random weights (latency does not depend on them) and its shared
export cache (tests/support/tiny.py), which holds every subnet the tests here measure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgenas.cli import main
from edgenas.core.errors import TransportError
from edgenas.core.files import sha256_file
from edgenas.device.connect import open_transport
from edgenas.device.lock import DeviceLock, installation_id
from edgenas.device.registry import get_device
from edgenas.measure.bench import DeviceBusyError, ModelFileError, bench_model
from edgenas.measure.plan import sample_archs
from edgenas.records.store import open_store
from edgenas.space.spec import SearchSpace

pytestmark = [pytest.mark.fleet, pytest.mark.usefixtures("user_home")]

REPO = Path(__file__).resolve().parents[2]
FAST = {"runs": 10, "min_secs": 0.2, "warmup_secs": 0.05}  # the protocol, shortened for tests
CAMPAIGN_SAMPLES = 8  # a latency predictor's minimum (the test fits one from the campaign)
REPEATED_SAMPLES = 3  # the repeated campaign's


@pytest.fixture(scope="module")
def tiny(tiny_supernet) -> dict:
    """The run's tiny supernet, its shared export cache and three exported models.  The cache holds
    the campaigns' subnets too, so the killed campaign and its resume benchmark at once instead of
    each starting export workers (those are tested by test_quickstart, test_fleet_specialize and
    test_pretrained_path)."""
    t = tiny_supernet
    space = t.space
    models = {name: t.export(arch, precision)
              for name, arch, precision in (("min", space.smallest(), "fp32"),
                                            ("max", space.largest(), "fp32"),
                                            ("min-int8", space.smallest(), "int8"))}
    for n in (CAMPAIGN_SAMPLES, REPEATED_SAMPLES):
        for arch in sample_archs(space, n, 0):
            t.export(arch, "fp32")
    return {"ckpt": t.ckpt, "cache": t.cache, "sha": t.sha, "space": space, **models}


def cli(home: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result.output


def register(home: Path, fleet, *names: str) -> None:
    """Add fleet devices (and ``here``, the host) to the workspace at ``home``."""
    for name in names:
        if name == "here":
            cli(home, "device", "add", "here", "--local")
        elif name in fleet.adb:
            dev = fleet.adb[name]
            cli(home, "device", "add", name, "--adb", dev.serial, "--python", dev.python,
                "--workdir", str(dev.root / "edgenas"))
        else:
            dev = fleet.ssh[name]
            cli(home, "device", "add", name, "--ssh", dev.target, "--key", str(dev.client_key),
                "--python", dev.python, "--accept-new-host-key")


def device_dir(fleet, home: Path, name: str) -> Path:
    if name == "here":
        with open_store(home) as store:
            return Path(get_device(store, name).workdir)
    return fleet.adb[name].root / "edgenas" if name in fleet.adb else fleet.ssh[name].workdir


def rows(home: Path, sql: str = "SELECT * FROM measurements ORDER BY id", params=()) -> list[dict]:
    with open_store(home) as store:
        return [dict(r) for r in store.query(sql, params)]


# ---------------------------------------------------------------------------------------------- bench


def test_bench_on_local_ssh_and_adb_stores_provenance_and_uploads_once(fleet, workspace, tiny):
    register(workspace, fleet, "here", "ssh1", "adb1")
    sha = json.loads((tiny["min"] / "manifest.json").read_text())["model"]["sha256"]
    expected_runtime = {"here": "litert", "ssh1": "litert", "adb1": "tflite_runtime"}
    for name in ("here", "ssh1", "adb1"):
        with open_store(workspace) as store:
            first = bench_model(store, workspace, name, tiny["min"], **FAST)
        # the runner may already be there (device add probes through it); the model is new
        assert set(first["uploaded"]) - {"runner.pyz"} == {"cache/models/" + sha + ".tflite"}
        remote = device_dir(fleet, workspace, name) / "cache" / "models" / f"{sha}.tflite"
        inode = remote.stat().st_ino  # an upload renames a new file over it; a use only touches it
        with open_store(workspace) as store:
            second = bench_model(store, workspace, name, tiny["min"], **FAST)
        assert second["uploaded"] == [], f"{name}: the second bench transferred {second['uploaded']}"
        assert remote.stat().st_ino == inode
        for rec in (first, second):
            assert rec["device"] == name and rec["runtime"] == expected_runtime[name]
            assert rec["runtime_version"] and rec["precision"] == "fp32" and rec["threads"] == 1
            assert rec["arch"] == tiny["space"].smallest().to_string() and rec["space"] == "mbv3-tiny"
            assert rec["model_sha256"] == sha and rec["source_sha256"] == tiny["sha"]
            assert 0 < rec["min_ms"] <= rec["median_ms"] <= rec["p90_ms"]
            assert rec["runs"] >= 10 and rec["peak_rss_kib"] > 0 and rec["cv"] is not None
    stored = rows(workspace)
    assert len(stored) == 6
    full = json.loads(stored[0]["result_json"])
    assert "state_before" in full and "state_after" in full and full["model"]["sha256"] == sha
    assert full["edgenas"]["uploaded"] and full["edgenas"]["host"]
    latency = json.loads((tiny["min"] / "manifest.json").read_text())["latency"]
    assert {"here", "ssh1", "adb1"} <= set(latency) and latency["ssh1"]["median_ms"] > 0
    out = cli(workspace, "measurements", "list", "--device", "adb1")
    assert out.count("tflite_runtime") == 2
    csv_text = cli(workspace, "measurements", "export", "--csv")
    header = csv_text.splitlines()[0]
    assert header.startswith("id,device,device_class,arch") and len(csv_text.splitlines()) == 7
    assert len(json.loads(cli(workspace, "measurements", "export", "--json", "--device", "ssh1"))) == 2


def test_bench_cli_table_and_json(fleet, workspace, tiny):
    register(workspace, fleet, "here")
    out = cli(workspace, "bench", str(tiny["min-int8"]), "--device", "here", "--runs", "10",
              "--min-secs", "0.2")
    assert "int8" in out and "litert" in out and "median ms" in out and "uploaded:" in out
    rec = json.loads(cli(workspace, "bench", str(tiny["min-int8"]), "--device", "here", "--runs", "10",
                         "--min-secs", "0.2", "--json"))
    assert rec["precision"] == "int8" and rec["uploaded"] == [] and rec["median_ms"] > 0


def test_slow_device_measures_slower(fleet, workspace, tiny):
    register(workspace, fleet, "ssh1", "ssh2", "slow")
    with open_store(workspace) as store:
        med = {name: bench_model(store, workspace, name, tiny["max"], runs=5, min_secs=0.3,
                                 warmup_secs=0.05, cv_threshold=1.0)["median_ms"]
               for name in ("ssh1", "ssh2", "slow")}
    # slow runs ssh2's runtime under a CPU quota: compare like with like, and with ssh1 too.
    assert med["slow"] > 1.5 * med["ssh2"], med
    assert med["slow"] > med["ssh1"], med


def test_corrupt_model_or_manifest_gives_a_clear_error_and_no_row(fleet, workspace, tiny, tmp_path):
    register(workspace, fleet, "ssh1")
    bad = tmp_path / "bad"
    bad.mkdir()
    # passes the host's checks (TFL3 identifier at bytes 4..8, sha256 recorded) but cannot be loaded
    (bad / "model.tflite").write_bytes(b"\x10\x00\x00\x00TFL3" + b"not a flatbuffer" * 90)
    manifest = json.loads((tiny["min"] / "manifest.json").read_text())
    manifest["model"].update(sha256=sha256_file(bad / "model.tflite"), bytes=1448)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with open_store(workspace) as store, pytest.raises(ModelFileError, match="cannot load"):
        bench_model(store, workspace, "ssh1", bad, **FAST)
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "model.tflite").write_bytes((tiny["min"] / "model.tflite").read_bytes()[:-100])
    (tampered / "manifest.json").write_text((tiny["min"] / "manifest.json").read_text())
    out = cli(workspace, "bench", str(tampered), "--device", "ssh1", code=1)
    assert "error:" in out and ("sha256 does not match" in out or "file changed or truncated" in out)
    out = cli(workspace, "bench", str(tmp_path), "--device", "ssh1", code=1)
    assert "manifest.json: missing" in out
    assert rows(workspace) == []


def test_two_benches_on_one_device_take_turns(fleet, tmp_path, tiny):
    # Two workspaces (so two different host flocks): only the lock on the device can serialise them.
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        register(home, fleet, "ssh1")
    results: list = [None, None]

    def run(i: int) -> None:
        with open_store(homes[i]) as store:
            results[i] = bench_model(store, homes[i], "ssh1", tiny["min"], runs=10, min_secs=1.0,
                                     warmup_secs=0.05)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    spans = sorted((json.loads(r["result_json"])["state_before"]["time"],
                    json.loads(r["result_json"])["state_after"]["time"]) for r in
                   (rows(h)[0] for h in homes))
    assert all(results) and len(spans) == 2
    assert spans[0][1] <= spans[1][0], f"benchmarks overlapped: {spans}"
    assert not (fleet.ssh["ssh1"].workdir / ".edgenas.lock").exists()


def test_device_lock_breaks_a_dead_holder_and_waits_for_a_live_one(fleet, workspace, tiny):
    register(workspace, fleet, "ssh1")
    lock_dir = fleet.ssh["ssh1"].workdir / ".edgenas.lock"
    with open_store(workspace) as store:
        dev = get_device(store, "ssh1")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open_transport(dev, workspace) as t:
        t.run(["mkdir", "-p", str(lock_dir)])
        # a holder of this workspace (its installation id) that died: broken at once
        record = f"tok {os.uname().nodename}@{installation_id(workspace)} {dead.pid} 900"
        t.run(["sh", "-c", f'echo "{record} $(cat /proc/sys/kernel/random/boot_id) '
                           f'$(cut -d. -f1 /proc/uptime)" > {lock_dir}/owner'])
        with open_store(workspace) as store:
            assert bench_model(store, workspace, "ssh1", tiny["min"], **FAST)["median_ms"] > 0
        assert not lock_dir.exists()
        holder = DeviceLock(t, "ssh1", ttl_s=600)
        holder.acquire()
        try:
            with open_store(workspace) as store, pytest.raises(DeviceBusyError, match="busy"):
                bench_model(store, workspace, "ssh1", tiny["min"], lock_timeout=1.5, **FAST)
        finally:
            holder.release()
        assert not lock_dir.exists()
    assert len(rows(workspace)) == 1


def test_device_killed_mid_benchmark_gives_a_clear_error_and_no_row(fleet, workspace, tiny):
    register(workspace, fleet, "victim")
    dev = fleet.ssh["victim"]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with open_store(workspace) as store:
                bench_model(store, workspace, "victim", tiny["max"], runs=1000, min_secs=30,
                            warmup_secs=0.05)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (dev.workdir / ".edgenas.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # inside the timed runs
        dev.kill()
        thread.join(timeout=60)
    finally:
        dev.start()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransportError), errors
    assert "victim" in str(errors[0])
    assert rows(workspace) == []


# ------------------------------------------------------------------------------------------- measure


def _measure_cmd(home: Path, tiny: dict) -> list[str]:
    return [sys.executable, "-c", "from edgenas.cli import main; main()", "--home", str(home),
            "measure", str(tiny["ckpt"]), "--device", "here", "--device", "ssh1",
            "--samples", str(CAMPAIGN_SAMPLES), "--runs", "10", "--min-secs", "0.15", "--warmup-secs",
            "0.05", "--workers", "2", "--export-cache", str(tiny["cache"])]


def _count_readonly(db: Path) -> int:
    """Rows stored so far, read without opening the workspace (no migrations, no write lock)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_campaign_killed_midway_resumes_without_duplicates(fleet, workspace, tiny):
    register(workspace, fleet, "here", "ssh1")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(_measure_cmd(workspace, tiny), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if _count_readonly(workspace / "edgenas.db") >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the campaign finished before it could be interrupted: " + \
            proc.stderr.read()[-2000:]
        seen = len(rows(workspace))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        time.sleep(0.5)
        try:  # the campaign's export workers, orphaned by the SIGKILL
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = len(rows(workspace))
    assert 2 <= before < 2 * CAMPAIGN_SAMPLES, (seen, proc.stderr.read()[-1500:])
    done = subprocess.run(_measure_cmd(workspace, tiny) + ["--json"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["complete"] and report["archs"] == CAMPAIGN_SAMPLES
    assert sum(d["skipped"] for d in report["devices"].values()) == before
    assert "[ssh1]" in done.stderr and "[here]" in done.stderr  # progress lines per device
    stored = rows(workspace)
    keys = [(r["device"], r["arch"], r["precision"]) for r in stored]
    assert len(keys) == len(set(keys)) == 2 * CAMPAIGN_SAMPLES
    archs = {r["arch"] for r in stored}
    space = tiny["space"]
    assert archs == {a.to_string() for a in sample_archs(space, CAMPAIGN_SAMPLES, 0)}
    assert {space.smallest().to_string(), space.largest().to_string()} <= archs
    assert len({r["campaign"] for r in stored}) == 1
    again = subprocess.run(_measure_cmd(workspace, tiny) + ["--json"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert json.loads(again.stdout)["devices"]["ssh1"]["measured"] == 0
    assert len(rows(workspace)) == 2 * CAMPAIGN_SAMPLES
    # A predictor from the real local measurements: fitted, saved, and honest about its error.
    out = cli(workspace, "predictor", "fit", "--device", "here")
    assert "within ±10 %" in out and "MACs only" in out
    assert (workspace / "predictors" / "latency-here-fp32-t1.json").is_file()
    pred = json.loads(cli(workspace, "predictor", "show", "--json"))[0]
    q = pred["quality"]
    # Ranking is what the search needs; the error is reported, not promised: these tiny models take
    # 0.1-1 ms, and on a shared 2-core host their own re-measurement noise is tens of percent.
    assert q["samples"] == CAMPAIGN_SAMPLES and q["spearman"] > 0.8, q
    assert 0 < q["p90_rel_error"] < 1.0 and 0 <= q["within_10"] <= 1, q
    out = cli(workspace, "predictor", "predict", "--device", "here", "--arch", "max")
    assert " ms ±" in out


def test_repeated_campaign_spreads_passes_and_tops_up_on_resume(tmp_path, tiny):
    """--repeats K: K rows per subnet, taken pass after pass (not back to back); a re-run with the
    same K measures nothing, one with a larger K only what is missing."""
    from edgenas.device import registry
    from edgenas.measure.bench import BenchSettings
    from edgenas.measure.campaign import measure
    from edgenas.measure.plan import MeasureError

    settings = BenchSettings(**FAST)
    with open_store(tmp_path) as store:
        registry.add_device(store, registry.make_device("here", "local", home=tmp_path))

        def run(repeats: int):
            return measure(store, tmp_path, tiny["ckpt"], ["here"], REPEATED_SAMPLES, ["fp32"], 1,
                           0, workers=0, progress=False, export_cache=tiny["cache"], settings=settings,
                           repeats=repeats)

        first = run(2)
        assert first.complete and first.devices["here"].measured == 6
        order = [r["arch"] for r in rows(tmp_path)]
        assert len(set(order[:3])) == 3 and order[3:] == order[:3]  # pass 1, then pass 2
        assert run(2).devices["here"].measured == 0
        third = run(3)
        assert third.devices["here"].measured == 3 and third.devices["here"].todo == 3
    counts = rows(tmp_path, "SELECT arch, COUNT(*) AS n FROM measurements GROUP BY arch")
    assert sorted(r["n"] for r in counts) == [3, 3, 3]
    with pytest.raises(MeasureError, match="--repeats must be at least 1"):
        with open_store(tmp_path) as store:
            measure(store, tmp_path, tiny["ckpt"], ["here"], 3, repeats=0)


def test_sampling_covers_the_space_evenly():
    space = SearchSpace.load("mbv3-tiny")
    archs = sample_archs(space, 60, seed=3)
    assert len({a.to_string() for a in archs}) == 60
    assert archs[0] == space.smallest() and archs[1] == space.largest()
    assert archs == sample_archs(space, 60, seed=3)  # a re-run asks for the same subnets
    res = [a.resolution for a in archs]
    assert all(abs(res.count(r) - 20) <= 2 for r in space.resolutions)
    for choices, values in ((space.depth_choices, [d for a in archs for d in a.depths]),
                            (space.kernel_choices, [k for a in archs for k in a.kernels]),
                            (space.expand_choices, [e for a in archs for e in a.expands])):
        share = [values.count(c) / len(values) for c in choices]
        assert min(share) > 0.2, share
    macs = sorted(space.macs(a) for a in archs)
    assert macs[0] == space.macs(space.smallest()) and macs[-1] == space.macs(space.largest())
