"""The on-device runner, run as its own process under each TFLite runtime.

The runner (the package devices/edgenas_device) ships to devices as one zipapp, runner.pyz, built by
edgenas.device.app, so it is tested the way a device runs it: a child process (`python runner.pyz ...`,
the archive built fresh for this session) whose stdout must be exactly one JSON object. Three runtimes:
ai-edge-litert and tensorflow.lite in .venv (numpy 2), tflite-runtime in .venv-tflite (numpy < 2, the
stand-in for a 32-bit Pi). The models are real converter output (tests/runner_models.py), cached between
sessions. The TensorFlow-runtime children take seconds to import TF, so they start in the background at
the beginning of the module and are collected by the tests that need them.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgenas.device.app import build_runner_app

try:
    from tests.support import runner_models
except ImportError:  # tests/ is not a package in every checkout
    import runner_models  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "devices" / "edgenas_device"
# Built at import (≈ 15 ms, cached by source hash): the background fixture needs it before any test.
RUNNER_APP = build_runner_app(ROOT / ".pytest_cache" / "runner_app", PACKAGE)
RUNNER = RUNNER_APP.path
VENV_PY = sys.executable  # .venv: ai-edge-litert + tensorflow + numpy 2
TFLITE_PY = ROOT / ".venv-tflite" / "bin" / "python"  # tflite-runtime + numpy 1.26
FAST = ["--runs", "5", "--min-secs", "0", "--warmup-runs", "1", "--warmup-secs", "0"]

needs_tflite_env = pytest.mark.skipif(not TFLITE_PY.exists(), reason=".venv-tflite missing (make setup)")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_litert = pytest.mark.skipif(not _has("ai_edge_litert"), reason="ai-edge-litert not installed")
needs_tf = pytest.mark.skipif(not _has("tensorflow"), reason="tensorflow not installed")


class Result:
    """A finished runner process: exit code, the one JSON object it printed, and its stderr."""

    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc, self.out, self.err = rc, out, err
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1, (
            f"stdout must be exactly one JSON line, got {out!r}\nstderr: {err[-2000:]}"
        )
        self.data = json.loads(lines[0])
        assert isinstance(self.data, dict)

    def __repr__(self) -> str:
        return f"Result(rc={self.rc}, data={self.data}, stderr={self.err[-1500:]!r})"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the runner must not lean on the repo being importable
    env.update(extra or {})
    return env


def start(
    python: str | Path, *args: str | Path, env: dict[str, str] | None = None, runner: bool = True
) -> subprocess.Popen:
    """Start `python runner.pyz ARGS` (runner=False: `python ARGS`, for interpreter flags)."""
    cmd = [str(python)] + ([str(RUNNER)] if runner else []) + [str(a) for a in args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(env), cwd="/"
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


def run(
    python: str | Path, *args: str | Path, env: dict[str, str] | None = None, runner: bool = True
) -> Result:
    return finish(start(python, *args, env=env, runner=runner))


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def models(request, tmp_path_factory) -> dict[str, Path]:
    """fp32 and int8 model files (each beside its manifest.json), built once and cached on disk."""
    if request.config.cache is not None:
        root = Path(request.config.cache.mkdir("runner_models"))
    else:
        root = tmp_path_factory.mktemp("runner_models")
    if not (root / runner_models.source_hash() / "done").exists() and not _has("tensorflow"):
        pytest.skip("tensorflow is needed to build the test models")
    built = runner_models.cached_models(root)
    # Each model in its own package folder with a manifest by the strict package rules (manifest.py).
    out: dict[str, Path] = {}
    for precision, src in built.items():
        folder = tmp_path_factory.mktemp("package_" + precision)
        shutil.copy(src, folder / "model.tflite")
        man = strict_manifest(folder / "model.tflite", precision)
        (folder / "manifest.json").write_text(json.dumps(man))
        out[precision] = folder / "model.tflite"
    return out


def strict_manifest(model: Path, precision: str, **changes) -> dict:
    """A manifest.json the package rules accept for ``model`` (``changes`` replace top-level keys)."""
    data = model.read_bytes()
    man = {
        "format": "edgenas-model",
        "schema_version": "1.0",
        "arch": "runner-test",
        "precision": precision,
        "labels": list(runner_models.LABELS),
        "input": {"size": runner_models.INPUT_SIZE, "layout": "NHWC", "mean": list(runner_models.MEAN),
                  "std": list(runner_models.STD)},
        "model": {"file": model.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
    }
    man.update(changes)
    return man


@pytest.fixture(scope="session")
def sample(models) -> dict[str, np.ndarray]:
    """One image as uint8 pixels and as the normalised float HWC array the manifest implies."""
    rng = np.random.default_rng(7)
    pixels = (rng.random((runner_models.INPUT_SIZE, runner_models.INPUT_SIZE, 3)) * 255).astype(np.uint8)
    norm = (pixels / 255.0 - np.float32(runner_models.MEAN)) / np.float32(runner_models.STD)
    return {"pixels": pixels, "normalised": norm.astype(np.float32)}


@pytest.fixture(scope="session")
def sample_files(sample, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("runner_inputs")
    np.save(d / "x.npy", sample["normalised"])
    np.save(d / "pixels.npy", sample["pixels"])
    files = {"npy": d / "x.npy", "pixels_npy": d / "pixels.npy"}
    if _has("PIL"):
        from PIL import Image

        Image.fromarray(sample["pixels"]).save(d / "img.png")
        files["png"] = d / "img.png"
    return files


@pytest.fixture(scope="module", autouse=True)
def background(models, sample_files) -> dict[str, subprocess.Popen]:
    """Start the slow children (each imports TensorFlow) at once, so they overlap with the fast tests."""
    procs: dict[str, subprocess.Popen] = {}
    if _has("tensorflow"):
        procs["info"] = start(VENV_PY, "info")
        procs["bench_tf_fp32"] = start(
            VENV_PY, "bench", models["fp32"], *FAST, "--runtime", "tensorflow"
        )
        procs["predict_tf_int8"] = start(
            VENV_PY, "predict", models["int8"], sample_files["npy"], "--runtime", "tensorflow"
        )
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def expected_scores(model: Path, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """What a direct in-test interpreter computes for the normalised HWC input x (quantized by hand)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model))
    it.allocate_tensors()
    ind, outd = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = ind["quantization"]
    batch = x[None]
    if ind["dtype"] != np.float32:
        info = np.iinfo(ind["dtype"])
        batch = np.clip(np.round(batch / scale) + zp, info.min, info.max).astype(ind["dtype"])
    it.set_tensor(ind["index"], batch)
    it.invoke()
    y = it.get_tensor(outd["index"]).astype(np.float32).reshape(-1)
    oscale, ozp = outd["quantization"]
    if outd["dtype"] != np.float32:
        y = (y - ozp) * oscale
    return y, {"scale": float(scale), "zero_point": int(zp)}


def check_bench(res: Result, model: Path, runtime: str, precision: str) -> dict:
    """The fields and invariants every bench result must satisfy."""
    assert res.rc == 0, res
    d = res.data
    assert d["command"] == "bench"
    assert d["runtime"]["name"] == runtime and d["runtime"]["version"]
    assert d["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert d["model"]["size_bytes"] == model.stat().st_size
    assert d["runner"]["sha256"] == hashlib.sha256(RUNNER.read_bytes()).hexdigest() == RUNNER_APP.sha256
    assert d["count"] >= 5 and d["count"] == len(d["times_ms"]) and d["times_listed_all"] is True
    assert d["min_ms"] <= d["median_ms"] <= d["max_ms"]
    assert d["min_ms"] <= d["p90_ms"] <= d["max_ms"]
    assert d["min_ms"] <= d["mean_ms"] <= d["max_ms"]
    assert d["std_ms"] >= 0 and d["cv"] >= 0
    assert abs(d["cv"] - d["std_ms"] / d["mean_ms"]) < 1e-9
    assert min(d["times_ms"]) == d["min_ms"] and max(d["times_ms"]) == d["max_ms"]
    assert d["init_ms"] > 0 and d["first_inference_ms"] > 0
    assert d["warmup"]["count"] >= 1
    assert d["threads"] == 1 and d["xnnpack"] is True
    mem = d["memory"]
    assert mem["peak_rss_kib"] > 0 and mem["rss_before_kib"] > 0
    assert mem["peak_rss_kib"] >= mem["rss_after_kib"] >= mem["rss_before_kib"] * 0.5
    for key in ("state_before", "state_after"):
        assert set(d[key]) >= {"cpufreq", "thermal", "time"}
    (inp,) = d["inputs"]
    assert inp["shape"] == [1, runner_models.INPUT_SIZE, runner_models.INPUT_SIZE, 3]
    (out,) = d["outputs"]
    assert out["shape"] == [1, runner_models.NUM_CLASSES]
    if precision == "int8":
        assert inp["dtype"] == "int8" and out["dtype"] == "int8"
        assert inp["quantization"]["scale"] > 0 and out["quantization"]["scale"] > 0
        assert d["delegation"]["op_counts"].get("HARD_SWISH") == 1
    else:
        assert inp["dtype"] == "float32" and inp["quantization"]["scale"] == 0
    assert d["protocol"]["runs"] == 5
    return d


# ---------------------------------------------------------------------------------------------------
# Standalone: no edgenas, Python 3.8 syntax, runs under an old interpreter without numpy
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py")))
def test_runner_is_standalone_and_python38_syntax(module):
    tree = ast.parse((PACKAGE / module).read_text(), feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
        relative = isinstance(node, ast.ImportFrom) and node.level > 0
        assert not relative, "relative imports break in a zipapp"
    third_party = imported - set(sys.stdlib_module_names) - {"edgenas_device"}
    assert third_party <= {"numpy", "ai_edge_litert", "tflite_runtime", "tensorflow", "PIL"}, third_party
    assert "edgenas" not in imported
    if module != "__init__.py":
        futures = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
        assert futures and futures[0].names[0].name == "annotations"  # PEP 604/585 hints stay strings


def _python38() -> str | None:
    """A real Python 3.8 binary (pyenv shims on PATH may refuse to run outside their directory)."""
    cands = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    cands += [c for c in ("/usr/bin/python3.8", shutil.which("python3.8")) if c]
    for cand in cands:
        try:
            ok = subprocess.run([cand, "-I", "-c", "pass"], capture_output=True, timeout=30, cwd="/")
        except (OSError, subprocess.SubprocessError):
            continue
        if ok.returncode == 0:
            return cand
    return None


PY38 = _python38()


@pytest.mark.skipif(PY38 is None, reason="no Python 3.8 interpreter here")
def test_runs_under_python38(models):
    """info works on a bare 3.8 (its numpy may be missing); bench then says what to install (exit 4)."""
    py = PY38
    res = run(py, "-I", str(RUNNER), "info", "--no-probe", runner=False)
    assert res.rc == 0, res
    assert res.data["python"]["version"].startswith("3.8")
    assert res.data["runner"]["sha256"] == RUNNER_APP.sha256
    # Every module imports on 3.8 (a runtime `X | Y`, a 3.9+ stdlib name would fail here).
    mods = sorted("edgenas_device." + p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    code = f"import sys; sys.path.insert(0, {str(RUNNER)!r}); import " + ", ".join(mods)
    imp = subprocess.run([py, "-I", "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert imp.returncode == 0, imp.stderr
    if res.data["runtime"] is None:
        res = run(py, "-I", str(RUNNER), "bench", models["fp32"], runner=False)
        assert res.rc == 4, res
        assert res.data["kind"] in ("numpy_missing", "no_runtime")
        assert 'pip install tflite-runtime "numpy<2"' in res.data["error"]


# ---------------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------------


@needs_tflite_env
def test_info_in_tflite_env():
    res = run(TFLITE_PY, "info")
    assert res.rc == 0, res
    d = res.data
    assert d["runtime"]["name"] == "tflite_runtime" and d["runtime"]["version"].startswith("2.")
    assert d["numpy"].startswith("1.")
    assert d["runtimes"]["litert"]["importable"] is False
    assert d["runtimes"]["tensorflow"]["importable"] is False


# ---------------------------------------------------------------------------------------------------
# bench, under each runtime
# ---------------------------------------------------------------------------------------------------


@needs_litert
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bench_litert(models, precision):
    res = run(VENV_PY, "bench", models[precision], *FAST, "--runtime", "litert")
    d = check_bench(res, models[precision], "litert", precision)
    # XNNPACK is a default delegate on x86/ARM builds; int8 HARD_SWISH splits the graph in two.
    assert d["delegation"]["xnnpack_applied"] is True
    assert d["delegation"]["delegate_partitions"] >= 1


@needs_tflite_env
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bench_tflite_runtime(models, precision):
    res = run(TFLITE_PY, "bench", models[precision], *FAST)  # auto picks tflite_runtime there
    check_bench(res, models[precision], "tflite_runtime", precision)
    assert res.data["numpy"].startswith("1.")


@pytest.mark.parametrize(
    "python,runtime",
    [
        pytest.param(VENV_PY, "litert", marks=needs_litert),
        pytest.param(TFLITE_PY, "tflite_runtime", marks=needs_tflite_env),
    ],
)
def test_bench_no_xnnpack(models, python, runtime):
    res = run(python, "bench", models["int8"], *FAST, "--no-xnnpack", "--runtime", runtime)
    assert res.rc == 0, res
    d = res.data
    assert d["xnnpack"] is False and d["op_resolver"] == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    assert d["delegation"]["delegate_partitions"] == 0
    assert d["delegation"]["xnnpack_applied"] is False
    assert d["delegation"]["xnnpack_delegate_created"] is False


@needs_litert
def test_bench_protocol_min_secs_and_max_secs(models):
    """At least --runs and at least --min-secs; --max-secs caps both."""
    res = run(VENV_PY, "bench", models["fp32"], "--runs", "3", "--min-secs", "0.3", "--warmup-secs", "0")
    assert res.rc == 0, res
    assert res.data["count"] >= 3
    assert sum(res.data["times_ms"]) > 0  # the loop ran for 0.3 s of wall time, mostly in invoke
    capped = run(
        VENV_PY,
        "bench",
        models["fp32"],
        "--runs",
        "100000000",
        "--min-secs",
        "0",
        "--warmup-secs",
        "0",
        "--max-secs",
        "0.2",
    )
    assert capped.rc == 0, capped
    assert 1 <= capped.data["count"] < 100000000
    if capped.data["count"] > 2000:
        assert len(capped.data["times_ms"]) == 2000 and capped.data["times_listed_all"] is False


# ---------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------


def _check_predict(res: Result, model: Path, sample, precision: str, exact: bool) -> None:
    assert res.rc == 0, res
    d = res.data
    expected, quant = expected_scores(model, sample["normalised"])
    probs = np.exp(expected - expected.max())
    probs /= probs.sum()
    top = d["predictions"][0]["top_k"]
    assert top[0]["index"] == int(np.argmax(expected))
    assert d["top1"] == top[0]
    assert top[0]["label"] == runner_models.LABELS[top[0]["index"]]
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert abs(top[0]["probability"] - float(probs.max())) < (1e-5 if exact else 0.02)
    assert d["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert d["manifest"] == str(model.parent / "manifest.json")
    assert d["output"]["softmax_applied"] is True
    if precision == "int8":
        assert d["input"]["quantization"]["scale"] == pytest.approx(quant["scale"])
        assert d["input"]["quantization"]["zero_point"] == quant["zero_point"]
        assert d["output"]["dequantized"] is True
    else:
        assert d["input"]["quantization"] is None


@needs_litert
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_predict_litert_matches_direct_interpreter(models, sample, sample_files, precision):
    res = run(
        VENV_PY, "predict", models[precision], sample_files["npy"], "--top-k", "3", "--runtime", "litert"
    )
    _check_predict(res, models[precision], sample, precision, exact=True)
    assert len(res.data["predictions"][0]["top_k"]) == 3
    assert res.data["input"]["preprocessing"].startswith("none")


@needs_tflite_env
@needs_litert
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_predict_tflite_runtime_matches_direct_interpreter(models, sample, sample_files, precision):
    res = run(TFLITE_PY, "predict", models[precision], sample_files["npy"])
    assert res.data.get("runtime", {}).get("name") == "tflite_runtime", res
    _check_predict(res, models[precision], sample, precision, exact=False)


@needs_litert
@pytest.mark.parametrize("kind", ["png", "pixels_npy"])
def test_predict_pixels_apply_manifest_normalisation(models, sample, sample_files, kind):
    """An image (Pillow) or uint8 pixels get /255 and the manifest's mean/std, then int8 quantization."""
    if kind not in sample_files:
        pytest.skip("Pillow not installed")
    res = run(VENV_PY, "predict", models["int8"], sample_files[kind], "--runtime", "litert")
    _check_predict(res, models["int8"], sample, "int8", exact=False)
    assert res.data["input"]["mean"] == pytest.approx(runner_models.MEAN)
    assert res.data["input"]["std"] == pytest.approx(runner_models.STD)


@needs_tflite_env
def test_predict_image_without_pillow_says_pass_npy(models, tmp_path):
    img = tmp_path / "img.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n")  # never decoded: the missing Pillow is found first
    res = run(TFLITE_PY, "predict", models["int8"], img)
    if res.rc == 0:
        pytest.skip(".venv-tflite has Pillow")
    assert res.rc == 5 and res.data["kind"] == "pillow_missing", res
    assert ".npy" in res.data["error"] and "pip install Pillow" in res.data["error"]


@needs_litert
def test_predict_without_manifest_and_with_other_valid_spelling(models, sample_files, tmp_path):
    bare = tmp_path / "bare" / "model.tflite"
    bare.parent.mkdir()
    shutil.copy(models["fp32"], bare)
    res = run(VENV_PY, "predict", bare, sample_files["npy"], "--top-k", "1")
    assert res.rc == 0, res
    assert res.data["manifest"] is None and res.data["top1"]["label"] is None
    assert "no manifest.json" in res.err

    # Another spelling the rules allow: mean/std on the 0..255 scale (pixel_range), size as [H, W].
    other = tmp_path / "other.json"
    inp = {"size": [16, 16], "pixel_range": [0, 255], "mean": [m * 255 for m in runner_models.MEAN],
           "std": [s * 255 for s in runner_models.STD]}
    other.write_text(json.dumps(strict_manifest(bare, "fp32", input=inp,
                                                labels=[n.upper() for n in runner_models.LABELS])))
    ref = run(VENV_PY, "predict", models["fp32"], sample_files["pixels_npy"], "--top-k", "1")
    res = run(VENV_PY, "predict", bare, sample_files["pixels_npy"], "--top-k", "1", "--manifest", other)
    assert res.rc == 0, res
    assert res.data["top1"]["label"] == ref.data["top1"]["label"].upper()
    assert res.data["top1"]["probability"] == pytest.approx(ref.data["top1"]["probability"], rel=1e-5)


@needs_litert
@pytest.mark.parametrize(
    "changes,field",
    [
        ({"labels": "/etc/passwd"}, "labels"),  # labels are never a file the runner reads and returns
        ({"labels": "labels.txt"}, "labels"),
        ({"classes": ["a"]}, "classes"),  # legacy spellings are refused, not silently ignored
        ({"format": None}, "format"),
        ({"schema_version": "2.0"}, "schema_version"),
    ],
)
def test_predict_refuses_manifests_the_rules_refuse(models, sample_files, tmp_path, changes, field):
    folder = tmp_path / "pkg"
    folder.mkdir()
    model = folder / "model.tflite"
    shutil.copy(models["fp32"], model)
    (folder / "labels.txt").write_text("secret-line\n")
    man = {k: v for k, v in strict_manifest(model, "fp32", **changes).items() if v is not None}
    (folder / "manifest.json").write_text(json.dumps(man))
    res = run(VENV_PY, "predict", model, sample_files["npy"], "--runtime", "litert")
    assert res.rc == 3 and res.data["kind"] == "manifest_invalid", res
    assert res.data["field"] == field and str(folder / "manifest.json") in res.data["error"]
    assert "secret-line" not in res.out and "root:" not in res.out


@needs_litert
def test_predict_refuses_a_model_its_manifest_does_not_vouch_for(models, sample_files, tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    model = folder / "model.tflite"
    shutil.copy(models["int8"], model)  # the int8 bytes under a manifest written for the fp32 model
    (folder / "manifest.json").write_text(json.dumps(strict_manifest(models["fp32"], "fp32")))
    res = run(VENV_PY, "predict", model, sample_files["npy"], "--runtime", "litert")
    assert res.rc == 3 and res.data["kind"] == "model_corrupt", res
    assert str(model) in res.data["error"] and "manifest records" in res.data["error"]


@needs_litert
def test_predict_bad_inputs(models, tmp_path):
    bad_manifest = tmp_path / "m.json"
    bad_manifest.write_text("{not json")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((16, 16, 3), np.float32))
    res = run(VENV_PY, "predict", models["fp32"], x, "--manifest", bad_manifest)
    assert (
        res.rc == 3 and res.data["kind"] == "manifest_invalid" and str(bad_manifest) in res.data["error"]
    )
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((8, 8, 3), np.float32))
    res = run(VENV_PY, "predict", models["fp32"], wrong)
    assert res.rc == 3 and res.data["kind"] == "input_invalid", res
    res = run(VENV_PY, "predict", models["fp32"], tmp_path / "missing.npy")
    assert res.rc == 3 and res.data["kind"] == "input_unreadable", res


# ---------------------------------------------------------------------------------------------------
# Errors: corrupt model, no runtime, usage
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "python,runtime",
    [
        pytest.param(VENV_PY, "litert", marks=needs_litert),
        pytest.param(TFLITE_PY, "tflite_runtime", marks=needs_tflite_env),
    ],
)
def test_corrupt_model_exit_3(models, tmp_path, python, runtime):
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"this is not a model at all")
    res = run(python, "bench", garbage, *FAST, "--runtime", runtime)
    assert res.rc == 3 and res.data["kind"] == "model_corrupt", res
    assert str(garbage) in res.data["error"] and "TFLite" in res.data["error"]
    # Right identifier, truncated body: the runtime's verifier refuses it, and the file is named.
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(models["int8"].read_bytes()[:200])
    res = run(python, "bench", truncated, *FAST, "--runtime", runtime)
    # (tflite-runtime 2.14 has no verifier and segfaults: the runner loads it in a child first.)
    assert res.rc == 3 and res.data["kind"] in ("model_unloadable", "model_corrupt"), res
    assert str(truncated) in res.data["error"]
    res = run(python, "predict", tmp_path / "absent.tflite", tmp_path / "x.npy", "--runtime", runtime)
    assert res.rc == 3 and "not found" in res.data["error"], res


def _bare_python() -> tuple[str, str] | None:
    """A system Python with no TFLite runtime (checked, not assumed), and the kind it should report."""
    probe = (
        "import importlib.util as u, json; "
        "print(json.dumps({m: u.find_spec(m) is not None for m in "
        "('numpy', 'ai_edge_litert', 'tflite_runtime', 'tensorflow')}))"
    )
    for cand in ("/usr/bin/python3", shutil.which("python3")):
        if not cand or not os.path.exists(cand) or Path(cand).resolve() == Path(VENV_PY).resolve():
            continue
        try:
            out = subprocess.run([cand, "-I", "-c", probe], capture_output=True, text=True, timeout=30)
            has = json.loads(out.stdout)
        except (OSError, ValueError, subprocess.SubprocessError):
            continue
        if not (has["ai_edge_litert"] or has["tflite_runtime"] or has["tensorflow"]):
            return cand, "no_runtime" if has["numpy"] else "numpy_missing"
    return None


def test_no_runtime_exit_4_with_pip_hint(models):
    # Hidden runtimes (deterministic, any machine).
    res = run(VENV_PY, "bench", models["fp32"], *FAST, env={"EDGENAS_RUNNER_HIDE_RUNTIMES": "all"})
    assert res.rc == 4 and res.data["kind"] == "no_runtime", res
    assert "pip install ai-edge-litert" in res.data["error"]  # Python 3.11 on x86_64/aarch64
    assert set(res.data["attempts"]) == {"litert", "tflite_runtime", "tensorflow"}
    # A forced runtime that is absent names its own package.
    res = run(VENV_PY, "predict", models["fp32"], "x.npy", "--runtime", "tflite_runtime")
    assert res.rc == 4 and 'pip install tflite-runtime "numpy<2"' in res.data["error"], res
    assert "numpy<2" in res.data["attempts"]["tflite_runtime"]  # refused beside numpy 2
    # A real system Python without any runtime.
    bare = _bare_python()
    if bare is None:
        pytest.skip("no runtime-free system python here")
    res = run(bare[0], "-I", str(RUNNER), "bench", models["fp32"], *FAST, runner=False)
    assert res.rc == 4 and res.data["kind"] == bare[1], res
    assert "pip install " in res.data["error"]


@needs_litert
def test_usage_errors_are_json_exit_2(models):
    res = run(VENV_PY)
    assert res.rc == 2 and res.data["kind"] == "usage", res
    res = run(VENV_PY, "bench", models["fp32"], "--runs", "0")
    assert res.rc == 2 and res.data["kind"] == "usage", res
    res = run(VENV_PY, "bench", models["fp32"], "--runtime", "onnx")
    assert res.rc == 2 and "onnx" in res.data["error"], res
    res = run(VENV_PY, "bench", models["fp32"], "--cpu-affinity", "x")
    assert res.rc == 2, res


# ---------------------------------------------------------------------------------------------------
# The TensorFlow-runtime children, started in the background when the module began
# ---------------------------------------------------------------------------------------------------


@needs_litert
@needs_tf
def test_info_in_main_env(background):
    res = finish(background["info"])
    assert res.rc == 0, res
    d = res.data
    assert d["command"] == "info"
    assert d["runtime"]["name"] == "litert" and d["runtime"]["version"]
    assert d["runner"]["sha256"] == hashlib.sha256(RUNNER.read_bytes()).hexdigest() == RUNNER_APP.sha256
    assert d["runner"]["version"]
    rts = d["runtimes"]
    assert rts["litert"]["importable"] is True
    assert rts["tensorflow"]["importable"] is True and rts["tensorflow"]["version"]  # probed in a child
    assert rts["tflite_runtime"]["installed"] is False and rts["tflite_runtime"]["importable"] is False
    assert d["numpy"] == np.__version__
    assert d["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert d["platform"]["machine"]
    assert d["cpu"]["count"] == os.cpu_count()
    assert d["cpu"]["available"] == len(os.sched_getaffinity(0))
    assert d["memory"]["total_kib"] > 0
    assert set(d["state"]) >= {"cpufreq", "thermal", "time"}


@needs_tf
def test_bench_tensorflow(models, background):
    res = finish(background["bench_tf_fp32"])
    check_bench(res, models["fp32"], "tensorflow", "fp32")


@needs_tf
@needs_litert
def test_predict_tensorflow_int8(models, sample, background):
    res = finish(background["predict_tf_int8"])
    assert res.data.get("runtime", {}).get("name") == "tensorflow", res
    _check_predict(res, models["int8"], sample, "int8", exact=False)


# ---------------------------------------------------------------------------------------------------
# The zipapp: deterministic bytes, rebuilt only when a source changes
# ---------------------------------------------------------------------------------------------------


def _package_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "edgenas_device"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "facts.cpython-311.pyc").write_bytes(b"stale bytecode")
    (src / "notes.txt").write_text("not shipped")
    return src


def test_app_is_deterministic_and_ships_only_sources(tmp_path):
    import zipfile

    src = _package_copy(tmp_path)
    a = build_runner_app(tmp_path / "cache_a", src)
    os.utime(src / "facts.py", (0, 0))  # timestamps and build folders do not change the bytes
    b = build_runner_app(tmp_path / "cache_b", src)
    assert a.sha256 == b.sha256 == RUNNER_APP.sha256
    assert a.path.read_bytes() == b.path.read_bytes()
    assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.sha256
    with zipfile.ZipFile(a.path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    expected = sorted("edgenas_device/" + p.name for p in PACKAGE.glob("*.py"))
    assert names == ["__main__.py"] + expected
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)


def test_app_cache_rebuilds_only_on_a_source_change(tmp_path):
    src = _package_copy(tmp_path)
    cache = tmp_path / "cache"
    first = build_runner_app(cache, src)
    stamp = first.path.stat().st_mtime_ns
    again = build_runner_app(cache, src)
    assert again == first and first.path.stat().st_mtime_ns == stamp  # reused, not rewritten
    # A damaged cache file is rebuilt, never returned.
    first.path.write_bytes(first.path.read_bytes()[:1000])
    repaired = build_runner_app(cache, src)
    assert repaired.sha256 == first.sha256
    assert hashlib.sha256(repaired.path.read_bytes()).hexdigest() == first.sha256
    # An edited source gives a new archive (and the old one stays for processes still using it).
    with open(src / "facts.py", "a") as f:
        f.write("\n# edited\n")
    edited = build_runner_app(cache, src)
    assert edited.sha256 != first.sha256 and edited.path != first.path and first.path.exists()


def test_app_refuses_a_folder_that_is_not_the_package(tmp_path):
    (tmp_path / "x.py").write_text("")
    with pytest.raises(FileNotFoundError, match="__main__.py"):
        build_runner_app(tmp_path / "cache", tmp_path)


def test_runner_from_the_source_folder_reports_the_same_source_hash(tmp_path):
    # `python -m edgenas_device` (no zipapp) names its folder and the hash the app cache is keyed by.
    from edgenas.device.app import _sources, source_hash

    code = f"import sys; sys.path.insert(0, {str(PACKAGE.parent)!r}); "
    code += "from edgenas_device.__main__ import main; sys.exit(main())"
    res = run(VENV_PY, "-I", "-c", code, "info", "--no-probe", runner=False)
    assert res.rc == 0, res
    assert res.data["runner"]["path"] == str(PACKAGE)
    assert res.data["runner"]["sha256"] == source_hash(_sources(PACKAGE))
    assert RUNNER_APP.path.parent.name == res.data["runner"]["sha256"][:16]
