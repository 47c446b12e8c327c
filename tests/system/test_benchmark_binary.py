"""Devices measured with LiteRT's ``benchmark_model`` instead of the runner (phones without Python).

Parser tests read text in the real tool's format.  The end-to-end tests use the real adb server and
device emulator, a real TFLite interpreter and the real workspace database; the binary itself is
``tests/support/fleet/benchmark_model_standin.py``, a protocol-level stand-in (the real binary cannot be
built or
downloaded here).  The emulator runs commands with /bin/sh on this host, where ``python3`` on PATH has no
TFLite runtime, so the test registers a copy of the stand-in whose first line names ``.venv``'s Python,
and registers the device with a Python that does not exist: only the binary can measure there.
"""

from __future__ import annotations

import json
import math
import random
import re
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from edgenas.core.files import sha256_file
from edgenas.device import registry
from edgenas.measure import benchmark_model as bmb
from edgenas.measure.bench import ModelFileError, bench_model
from edgenas.records.store import MIGRATIONS, open_store
from tests.support import fleet_models, runner_models
from tests.support.cli_runner import Cli

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "support" / "fleet" / "benchmark_model_standin.py"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"  # ai-edge-litert + numpy
FAST = ["--runs", "10", "--min-secs", "0.2", "--cv-threshold", "100"]

# What a release build prints (LiteRT 2.x, CPU): INFO lines, two statistics lines, timings, memory.
REAL_OUTPUT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [50]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/edgenas/models/cache/ab.tflite]
INFO: Loaded model /data/local/tmp/edgenas/models/cache/ab.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 5.4562
INFO: Initialized session in 25.4ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding \
150 seconds.
INFO: count=24 first=33561 curr=20345 min=19988 max=33561 avg=21222.1 std=2689

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding \
150 seconds.
INFO: count=50 first=20410 curr=20120 min=19870 max=22311 avg=20300 std=406

INFO: Inference timings in us: Init: 25400, First inference: 33561, Warmup (avg): 21222.1, \
Inference (avg): 20300
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE \
to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=3.0 overall=10.2
INFO: Overall peak memory footprint (MB) via periodic monitoring: 12.5
"""


# ---------------------------------------------------------------------------------------- parser


def test_parse_release_output_uses_the_mean_and_says_so():
    parsed = bmb.parse_output(REAL_OUTPUT)
    assert parsed["warmup"]["count"] == 24 and parsed["timed"]["count"] == 50
    assert parsed["errors"] == [] and parsed["unconsumed_flags"] == []
    m = bmb.to_measurement(parsed, threads=4, protocol={"runs": 50})
    assert m["count"] == 50 and m["threads"] == 4
    assert m["median_ms"] == m["mean_ms"] == 20.3 and m["median_source"] == "avg"
    assert m["p90_ms"] is None and m["percentiles_ms"] == {}
    assert m["min_ms"] == 19.87 and m["max_ms"] == 22.311 and m["std_ms"] == 0.406
    assert m["cv"] == pytest.approx(406 / 20300)
    assert m["init_ms"] == 25.4 and m["first_inference_ms"] == 33.561
    assert m["warmup"] == {"count": 24, "mean_ms": 21.2221}
    assert m["memory"] == {"peak_rss_kib": 12800, "footprint_init_mib": 3.0,
                           "footprint_overall_mib": 10.2}
    assert m["model_size_mb"] == 5.4562


def test_parse_all_same_single_run_and_scientific_averages():
    assert bmb.parse_stat("count=5 curr=1234(all same)") == {
        "count": 5, "curr": 1234.0, "all_same": True, "first": 1234.0, "min": 1234.0, "max": 1234.0,
        "avg": 1234.0, "std": 0.0}
    assert bmb.parse_stat("count=1 curr=987")["avg"] == 987.0
    # ostream prints doubles with 6 significant digits: a 1.2 s inference comes out in e-notation.
    assert bmb.parse_stat("count=3 first=1300000 curr=1200000 min=1200000 max=1300000 "
                          "avg=1.23333e+06 std=47140")["avg"] == 1.23333e6
    text = REAL_OUTPUT.replace("count=50 first=20410 curr=20120 min=19870 max=22311 avg=20300 std=406",
                               "count=50 curr=20120(all same)")
    m = bmb.to_measurement(bmb.parse_output(text), threads=1, protocol={})
    assert m["count"] == 50 and m["median_ms"] == m["min_ms"] == 20.12 and m["cv"] == 0.0


def test_parse_percentiles_printed_by_newer_builds():
    text = REAL_OUTPUT.replace("avg=20300 std=406", "avg=20300 std=406 p5=19901 median=20233 p90=20950 "
                                                    "p95=21408")
    m = bmb.to_measurement(bmb.parse_output(text), threads=1, protocol={})
    assert m["median_ms"] == 20.233 and m["median_source"] == "median" and m["mean_ms"] == 20.3
    assert m["p90_ms"] == 20.95
    assert m["percentiles_ms"] == {"median": 20.233, "p5": 19.901, "p90": 20.95, "p95": 21.408}


def test_parse_errors_unconsumed_flags_and_incomplete_output():
    missing = ("INFO: STARTING!\nINFO: Graph: [x.tflite]\n", "ERROR: Could not open 'x.tflite'.\n"
               "ERROR: Failed to mmap model x.tflite\nERROR: Benchmarking failed.\n")
    parsed = bmb.parse_output(bmb.combine(*missing))
    assert parsed["errors"][:2] == ["Could not open 'x.tflite'.", "Failed to mmap model x.tflite"]
    assert bmb.is_model_error(parsed["errors"])
    assert not bmb.is_model_error(["Please specify the name of your TF Lite input file with --graph"])
    with pytest.raises(bmb.OutputError, match="no statistics line"):
        bmb.to_measurement(parsed, threads=1, protocol={})
    old = bmb.parse_output("WARN: Unconsumed cmdline flags: --warmup_min_secs=0.5 "
                           "--report_peak_memory_footprint=true\n" + REAL_OUTPUT)
    assert old["unconsumed_flags"] == ["warmup_min_secs", "report_peak_memory_footprint"]
    assert "Unconsumed" in bmb.tail("a\nWARN: Unconsumed cmdline flags: --x=1\n")
    zero = REAL_OUTPUT.replace("count=50 first=20410 curr=20120 min=19870 max=22311 avg=20300 std=406",
                               "count=0")
    with pytest.raises(bmb.OutputError, match="zero timed runs"):
        bmb.to_measurement(bmb.parse_output(zero), threads=1, protocol={})
    assert bmb.parse_version(1, "ERROR: Please specify the name of your TF Lite input file") is None
    assert bmb.parse_version(0, "LiteRT version: 2.16.1\n") == "2.16.1"


TIMED = "count=50 first=20410 curr=20120 min=19870 max=22311 avg=20300 std=406"


def _timed(line: str) -> str:
    return REAL_OUTPUT.replace(TIMED, line)


@pytest.mark.parametrize("line, reason", [
    ("count=nan first=1 curr=1 min=1 max=1 avg=1 std=0", "impossible run count 'nan'"),
    ("count=inf first=1 curr=1 min=1 max=1 avg=1 std=0", "impossible run count 'inf'"),
    ("count=2.5 first=1 curr=1 min=1 max=1 avg=1 std=0", "impossible run count '2.5'"),
    ("count=-3 first=1 curr=1 min=1 max=1 avg=1 std=0", "impossible run count '-3'"),
    ("count=1e12 first=1 curr=1 min=1 max=1 avg=1 std=0", "impossible run count"),
    ("count=50 first=20410 curr=20120 min=19870 max=22311 avg=nan std=406", "impossible avg=nan"),
    ("count=50 first=20410 curr=20120 min=19870 max=22311 avg=-20300 std=406", "impossible avg=-20300"),
    ("count=50 first=20410 curr=20120 min=-5 max=22311 avg=20300 std=406", "impossible min=-5"),
    ("count=50 first=20410 curr=20120 min=19870 max=22311 avg=20300 std=-406", "impossible std=-406"),
    ("count=50 first=20410 curr=20120 min=19870 max=inf avg=20300 std=406", "impossible max=inf"),
    ("count=50 first=1 curr=1 min=1 max=3e9 avg=2e9 std=1", "impossible max=3e9"),
    ("count=50 first=1 curr=1 min=1 max=1e999 avg=2 std=1", "impossible max=1e999"),
    ("count=50 first=1 curr=1 min=900 max=100 avg=500 std=1", "min above max"),
    ("count=50 first=1 curr=1 min=100 max=900 avg=5000 std=1", "avg outside min..max"),
    ("count=50 first=1 curr=1 min=100 max=900 avg=500 std=1 median=1e5", "median outside min..max"),
    ("count=5 curr=-1234(all same)", "not a statistics line|without a value|impossible"),
    ("count=5(all same)", "without a value"),
    ("count=50 avg=" + "9" * 5000, "statistics line of 5[0-9]{3} characters"),
])
def test_impossible_statistics_are_one_clear_output_error(line, reason):
    """A device that prints nan, inf, negative or absurd timings gets one OutputError with the reason,
    never a ValueError/OverflowError out of int() or float(), never a negative latency in the store."""
    parsed = bmb.parse_output(_timed(line))  # never raises
    with pytest.raises(bmb.OutputError, match=reason) as caught:
        bmb.to_measurement(parsed, threads=1, protocol={})
    message = str(caught.value)
    assert "\n" not in message and len(message) < 2 * bmb.MAX_MESSAGE_CHARS + 200
    with pytest.raises(bmb.OutputError):
        bmb.parse_stat(line)
    # The warm-up line is held to the same rules: a broken log is broken wherever it is.
    warmup = "count=24 first=33561 curr=20345 min=19988 max=33561 avg=21222.1 std=2689"
    warm = REAL_OUTPUT.replace(warmup, line)
    with pytest.raises(bmb.OutputError, match=reason):
        bmb.to_measurement(bmb.parse_output(warm), threads=1, protocol={})


def test_huge_output_and_absurd_side_values():
    with pytest.raises(bmb.OutputError, match="average of 0 us"):
        bmb.to_measurement(bmb.parse_output(_timed("count=50 min=0 max=0 avg=0 std=0")), threads=1,
                           protocol={})
    huge = REAL_OUTPUT + ("INFO: " + "x" * 1000 + "\n") * 1100
    parsed = bmb.parse_output(huge)
    assert parsed["timed"] is None and parsed["errors"] == []
    with pytest.raises(bmb.OutputError, match="more than the 1,000,000"):
        bmb.to_measurement(parsed, threads=1, protocol={})
    assert len(bmb.tail(huge)) <= 800
    # Many error lines, and one enormous one, are kept bounded.
    noisy = bmb.parse_output("ERROR: " + "e" * 10_000 + "\n" + "ERROR: again\n" * 500)
    assert len(noisy["errors"]) == bmb.MAX_MESSAGES
    assert max(len(e) for e in noisy["errors"]) <= bmb.MAX_MESSAGE_CHARS + 1
    # Init, first inference, memory: a bad value is dropped with a warning; the timing still counts.
    side = (REAL_OUTPUT.replace("Init: 25400", "Init: -25400").replace("init=3.0", "init=nan")
            .replace("monitoring: 12.5", "monitoring: inf").replace("(MB): 5.4562", "(MB): 1e99")
            .replace("iterations and at least 1 seconds", "iterations and at least nan seconds")
            .replace("at least 50 iterations", "at least " + "9" * 5000 + " iterations"))
    m = bmb.to_measurement(bmb.parse_output(side), threads=1, protocol={})
    assert m["median_ms"] == 20.3 and m["init_ms"] == 25.4  # the "Initialized session in" line
    assert m["memory"]["peak_rss_kib"] is None and m["memory"]["footprint_init_mib"] is None
    assert m["model_size_mb"] is None
    assert sum("ignored" in w for w in m["warnings"]) == 4
    assert bmb.parse_state("cpufreq\t0\tondemand\t" + "9" * 5000 + "\t1\t2\ntime\t-" + "1" * 30)[
        "cpufreq"][0]["cur_khz"] is None


# Replacement values a lying or broken device might print in place of a number.
_BAD_NUMBERS = ("nan", "-nan", "inf", "-inf", "-1", "-0.5", "0", "1e300", "1e10", "2e9", "9" * 400,
                "9" * 5000, "", "x", "1e", "--3", ".", "+7", "1.5", "NaN", "Infinity", "0x10")


def _corrupt(text: str, rng: random.Random) -> str:
    """A few random corruptions of a real log: numbers swapped for hostile ones, lines dropped,
    duplicated, reordered or cut, garbage inserted, or the whole log blown up."""
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        lines = text.split("\n")
        if op <= 2:  # replace one number
            spans = [m.span() for m in re.finditer(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]
            if spans:
                a, b = rng.choice(spans)
                text = text[:a] + rng.choice(_BAD_NUMBERS) + text[b:]
        elif op == 3 and lines:
            del lines[rng.randrange(len(lines))]
            text = "\n".join(lines)
        elif op == 4 and lines:
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            text = "\n".join(lines)
        elif op == 5:
            text = text[:rng.randrange(len(text) + 1)]
        elif op == 6:
            garbage = "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0, 0x3000))))
                              for _ in range(rng.randrange(1, 80)))
            i = rng.randrange(len(text) + 1)
            text = text[:i] + garbage + text[i:]
        elif rng.random() < 0.05:
            text = text * (bmb.MAX_OUTPUT_CHARS // max(len(text), 1) + 2)
        else:
            text = text.replace("count=", rng.choice(("count=", "cnt=", "count=count=", "count= ")), 1)
    return text


def _numbers(value, path="record"):
    """Every number in a record, with where it is."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def test_fuzzed_logs_give_a_valid_record_or_one_output_error():
    """Property: for any corruption of a real log, the parser returns a record whose every number is
    finite and non-negative (latencies below 1e6 ms, min ≤ median ≤ max), or raises OutputError —
    nothing else.  Seeded, so a failure reproduces."""
    rng = random.Random(20240612)
    bases = (REAL_OUTPUT, _timed("count=50 curr=20120(all same)"),
             _timed(TIMED + " p5=19901 median=20233 p90=20950 p95=21408"))
    outcomes = {"record": 0, "error": 0}
    for case in range(1500):
        text = _corrupt(rng.choice(bases), rng)
        try:
            parsed = bmb.parse_output(text)
        except Exception as exc:  # noqa: BLE001 - the property is that nothing escapes
            pytest.fail(f"case {case}: parse_output raised {exc!r} on {text[:300]!r}")
        try:
            m = bmb.to_measurement(parsed, threads=2, protocol={})
        except bmb.OutputError as exc:
            assert type(exc) is bmb.OutputError and "\n" not in str(exc)
            outcomes["error"] += 1
            continue
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"case {case}: to_measurement raised {exc!r} on {text[:300]!r}")
        outcomes["record"] += 1
        for where, number in _numbers(m):
            assert math.isfinite(number) and number >= 0, (case, where, number, text[:300])
        assert m["count"] >= 1 and 0 < m["mean_ms"] <= 1e6 and 0 <= m["median_ms"] <= 1e6
        slack = 1e-4 * m["max_ms"] + 0.001
        assert m["min_ms"] - slack <= m["median_ms"] <= m["max_ms"] + slack, (case, text[:300])
    # Both outcomes occur, so the corruptions neither always break nor never break the log.
    assert outcomes["record"] > 100 and outcomes["error"] > 100, outcomes


def test_argv_uses_the_binarys_flag_syntax():
    argv = bmb.build_argv("./bin/benchmark_model", "models/cache/a.tflite", threads=0, runs=50,
                          min_secs=1.0, max_secs=150.0, warmup_runs=1, warmup_secs=0.5)
    assert argv == ["./bin/benchmark_model", "--graph=models/cache/a.tflite", "--num_threads=-1",
                    "--num_runs=50", "--min_secs=1", "--max_secs=150", "--warmup_runs=1",
                    "--warmup_min_secs=0.5", "--report_peak_memory_footprint=true"]
    assert bmb.build_argv("b", "g", threads=2, runs=1, min_secs=0.05, max_secs=1, warmup_runs=0,
                          warmup_secs=0, xnnpack=False)[-1] == "--use_xnnpack=false"


def test_state_script_runs_in_a_plain_shell():
    out = subprocess.run(["sh", "-c", bmb.STATE_SCRIPT], capture_output=True, text=True, check=True)
    state = bmb.parse_state(out.stdout)
    assert state["time"] and set(state) == {"cpufreq", "thermal", "throttled", "time"}
    fake = ("cpufreq\t10\tschedutil\t1800000\t300000\t2400000\ncpufreq\t2\tperformance\t\t\t\n"
            "thermal\tthermal_zone0\t41500\tcpu-big thermal\ntime\t1700000000\n")
    state = bmb.parse_state(fake)
    assert [c["cpu"] for c in state["cpufreq"]] == [2, 10]
    assert state["cpufreq"][1] == {"cpu": 10, "governor": "schedutil", "cur_khz": 1800000,
                                   "min_khz": 300000, "max_khz": 2400000}
    assert state["cpufreq"][0]["cur_khz"] is None
    assert state["thermal"] == [{"zone": "thermal_zone0", "type": "cpu-big thermal", "temp_c": 41.5}]


# ---------------------------------------------------------------------------------------- the stand-in


@pytest.fixture(scope="module")
def models(request, tmp_path_factory) -> dict[str, Path]:
    cache = Path(request.config.cache.mkdir("runner_models"))
    src = runner_models.cached_models(cache)
    root = tmp_path_factory.mktemp("bm-models")
    fp32 = fleet_models.make_model_dir(root / "fp32", src["fp32"], name="net", precision="fp32")
    int8 = fleet_models.make_model_dir(root / "int8", src["int8"], name="net", precision="int8")
    return {"fp32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    """The stand-in with ``.venv``'s Python in its first line, mode 0644 (the bench must chmod it)."""
    path = tmp_path_factory.mktemp("bm-binary") / "benchmark_model"
    body = STANDIN.read_text().split("\n", 1)[1]
    path.write_text(f"#!{VENV_PYTHON}\n{body}")
    path.chmod(0o644)
    return path


def test_standin_speaks_the_real_protocol(binary, models, tmp_path):
    exe = tmp_path / "benchmark_model"
    exe.write_bytes(binary.read_bytes())
    exe.chmod(0o755)
    argv = bmb.build_argv(str(exe), str(models["fp32"] / "model.tflite"), threads=1, runs=7,
                          min_secs=0.05, max_secs=10, warmup_runs=2, warmup_secs=0.01)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    parsed = bmb.parse_output(bmb.combine(res.stdout, res.stderr))
    assert parsed["runs_requested"] == [{"runs": 2, "min_secs": 0.01, "max_secs": 10.0},
                                        {"runs": 7, "min_secs": 0.05, "max_secs": 10.0}]
    assert parsed["warmup"]["count"] >= 2 and parsed["timed"]["count"] >= 7
    assert parsed["peak_mb"] > 0 and parsed["init_us"] > 0 and parsed["unconsumed_flags"] == []
    assert re.search(r"^INFO: count=\d+ (first=\d+ curr=\d+ min=\d+ max=\d+ avg=\S+ std=\d+|curr=\d+)",
                     res.stdout, re.M)
    # As the real tool: unknown flags are only warned about; bad values and missing files fail.
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "WARN: Unconsumed cmdline flags: --version" in res.stdout
    assert "ERROR: Please specify the name of your TF Lite input file with --graph" in res.stderr
    res = subprocess.run([str(exe), "--graph=nope.tflite", "--num_runs=many"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1 and "ERROR: usage:" in res.stderr
    res = subprocess.run([str(exe), "--graph=nope.tflite"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "ERROR: Could not open 'nope.tflite'.\nERROR: Failed to mmap model nope.tflite" in res.stderr


# ---------------------------------------------------------------------------------------- registry/CLI


def test_a_workspace_from_before_the_column_is_upgraded_in_place(workspace):
    added = next(i for i, m in enumerate(MIGRATIONS) if "benchmark_binary" in m)
    with open_store(workspace, MIGRATIONS[:added]) as store:
        registry_before = store.version
        with store.transaction() as conn:
            conn.execute("INSERT INTO devices (name, kind, serial, workdir, python, created_at, "
                         "updated_at) VALUES ('old', 'adb', 'R1', '/data/local/tmp/edgenas', 'python3', "
                         "0, 0)")
    with open_store(workspace) as store:
        assert (registry_before, store.version) == (added, len(MIGRATIONS))
        old = registry.get_device(store, "old")
    assert old.serial == "R1" and old.benchmark_binary is None


@pytest.mark.fleet
def test_device_add_checks_and_keeps_the_binary(fleet, workspace, tmp_path, binary, monkeypatch):
    cli = Cli(workspace)
    serial = fleet.adb["adb1"].serial  # device add reads the device's own serial: it must answer
    out = cli("device", "add", "phone", "--adb", serial, "--benchmark-binary",
              str(tmp_path / "missing"), code=1)
    assert "benchmark binary" in out and "no such file" in out
    out = cli("device", "add", "phone", "--adb", serial, "--benchmark-binary", str(tmp_path), code=1)
    assert "not a regular file" in out
    monkeypatch.chdir(binary.parent)  # a relative path is stored absolute
    out = cli("device", "add", "phone", "--adb", serial, "--benchmark-binary", "benchmark_model")
    monkeypatch.chdir(REPO)
    assert f"benchmarks run {binary}" in out
    shown = cli.json("device", "show", "phone")
    assert shown["benchmark_binary"] == str(binary) and shown["kind"] == "adb"
    assert cli.json("device", "list")[0]["benchmark_binary"] == str(binary)
    assert str(binary) in cli("device", "show", "phone")
    cli("device", "add", "pi", "--ssh", "pi@10.9.9.9", "--benchmark-binary", str(binary))
    assert cli.json("device", "show", "pi")["benchmark_binary"] == str(binary)
    # An inventory import updates a device but keeps the binary it does not mention.
    inv = tmp_path / "inventory.yml"
    inv.write_text("all:\n  hosts:\n    phone: {edgenas_kind: adb, edgenas_serial: R58M2}\n")
    cli("device", "import", str(inv))
    assert cli.json("device", "show", "phone")["benchmark_binary"] == str(binary)
    cli("device", "add", "phone", "--adb", serial, "--replace")
    assert cli.json("device", "show", "phone")["benchmark_binary"] is None


# ---------------------------------------------------------------------------------------- on the fleet


def _register(cli: Cli, fleet, binary: Path, name: str = "phone") -> Path:
    """adb1 with its own workdir, a Python that does not exist, and the benchmark binary."""
    dev = fleet.adb["adb1"]
    workdir = dev.root / f"bm-{uuid.uuid4().hex[:8]}"
    cli("device", "add", name, "--adb", dev.serial, "--python", "/no/python3", "--workdir", str(workdir),
        "--benchmark-binary", str(binary))
    return workdir


def _stored(home: Path) -> list[dict]:
    with open_store(home) as store:
        return [dict(r) for r in store.query("SELECT * FROM measurements ORDER BY id")]


@pytest.mark.fleet
@pytest.mark.usefixtures("user_home")
def test_bench_on_adb_with_the_binary_stores_its_numbers_and_uploads_once(fleet, workspace, binary,
                                                                           models):
    cli = Cli(workspace)
    workdir = _register(cli, fleet, binary)
    model = models["fp32"]
    sha = json.loads((model / "manifest.json").read_text())["model"]["sha256"]
    first = cli.json("bench", str(model), "--device", "phone", *FAST)
    assert sorted(first["uploaded"]) == ["bin/benchmark_model", f"cache/models/{sha}.tflite"]
    pushed = workdir / "bin" / "benchmark_model"
    assert sha256_file(pushed) == sha256_file(binary) and stat.S_IMODE(pushed.stat().st_mode) == 0o755
    assert not (workdir / "runner.pyz").exists()
    mtime = pushed.stat().st_mtime_ns
    second = cli.json("bench", str(model), "--device", "phone", *FAST)
    assert second["uploaded"] == [] and pushed.stat().st_mtime_ns == mtime

    rows = _stored(workspace)
    assert len(rows) == 2
    for row in rows:
        full = json.loads(row["result_json"])
        assert row["runtime"] == "benchmark_model" and row["runtime_version"] is None
        assert row["device"] == "phone" and row["precision"] == "fp32" and row["threads"] == 1
        assert row["model_sha256"] == sha and row["arch"] == "runner-test-fp32"
        # The numbers are the binary's own: its last statistics line, in µs.
        timed = bmb.parse_stat(re.findall(r"^INFO: (count=.*)$", full["output"], re.M)[-1])
        assert row["runs"] == timed["count"] >= 10
        assert row["mean_ms"] == row["median_ms"] == pytest.approx(timed["avg"] / 1000)
        assert row["min_ms"] == pytest.approx(timed["min"] / 1000) and row["p90_ms"] is None
        assert full["median_source"] == "avg" and row["cv"] == pytest.approx(timed["std"] / timed["avg"])
        assert row["init_ms"] > 0 and row["first_ms"] > 0 and row["peak_rss_kib"] > 1024
        assert full["benchmark_binary"]["sha256"] == sha256_file(binary)
        assert "--report_peak_memory_footprint=true" in full["benchmark_binary"]["argv"]
        before, after = full["state_before"], full["state_after"]
        assert before["time"] and after["time"] >= before["time"] and "cpufreq" in before
        assert full["model"]["sha256"] == sha
    latency = json.loads((model / "manifest.json").read_text())["latency"]["phone"]
    assert latency["runtime"] == "benchmark_model" and latency["median_ms"] > 0
    assert "benchmark_model" in cli("measurements", "list", "--device", "phone")


@pytest.mark.fleet
@pytest.mark.usefixtures("user_home")
def test_corrupt_model_on_the_binary_is_a_model_error_and_stores_nothing(fleet, workspace, binary,
                                                                         models, tmp_path):
    cli = Cli(workspace)
    _register(cli, fleet, binary)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.tflite").write_bytes(b"\x10\x00\x00\x00TFL3" + b"not a flatbuffer" * 90)
    manifest = json.loads((models["fp32"] / "manifest.json").read_text())
    manifest["model"].update(sha256=sha256_file(bad / "model.tflite"), bytes=1448)
    manifest["latency"] = {}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with open_store(workspace) as store, pytest.raises(ModelFileError) as err:
        bench_model(store, workspace, "phone", bad, runs=5, min_secs=0.05, warmup_secs=0.01)
    msg = str(err.value)
    assert "benchmark_model cannot load" in msg and "not a valid Flatbuffer" in msg
    assert "Failed to mmap model" in msg
    out = cli("bench", str(bad), "--device", "phone", *FAST, code=1)
    assert "error:" in out and "cannot load" in out
    assert _stored(workspace) == []


@pytest.mark.fleet
@pytest.mark.usefixtures("user_home")
def test_a_phone_without_python_is_a_full_fleet_member(fleet, workspace, binary, models, tmp_path):
    """push (with its health check through benchmark_model), status, fleet bench in place, rollback —
    all through the shell and the binary; predict says plainly that it needs the runner."""
    cli = Cli(workspace)
    workdir = _register(cli, fleet, binary)
    first = cli.json("fleet", "push", str(models["fp32"]), "--device", "phone", "--name", "net")
    assert first["results"][0]["status"] == "ok", first
    assert "health check ok" in first["results"][0]["reason"]
    assert not (workdir / "runner.pyz").exists()  # no Python there: the runner is never pushed
    second = cli.json("fleet", "push", str(models["int8"]), "--device", "phone", "--name", "net")
    assert second["results"][0]["status"] == "ok", second
    rows = cli.json("fleet", "status", "--device", "phone")
    assert rows[0]["version"] == second["version"] and rows[0]["previous"] == first["version"]
    assert not rows[0]["drift"]
    bench = cli.json("fleet", "bench", "--device", "phone", "--runs", "10", "--min-secs", "0.2")
    row = bench["rows"][0] if isinstance(bench, dict) else bench[0]
    assert row["runtime"] == "benchmark_model" and row["version"] == second["version"], row
    back = cli.json("fleet", "rollback", "--device", "phone")
    assert back["results"][0]["status"] == "ok" and back["results"][0]["version"] == first["version"]
    image = tmp_path / "x.npy"
    image.write_bytes(b"\x93NUMPY")  # never read: predict refuses before sending anything
    out = cli("fleet", "predict", str(image), "--device", "phone", code=1)
    assert "needs the edgenas runner" in out
