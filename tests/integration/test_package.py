"""The model package: one strict manifest reader and writer shared by host and device.

Crafted folders (absolute paths, ``../``, symlinks out, not-TFLite files, wrong or missing sha256, labels
as a path, oversized labels, a future schema version, truncated JSON) must each fail with one line
naming the field, through every host reader and through the device module on a bare Python; a real
TFLite model round-trips through ``ModelPackage.write`` / ``load`` / ``record_latency``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from edgenas_device import manifest as rules

from edgenas.export.package import ModelPackage, PackageError, record_latency
from tests.support import runner_models

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "deploy" / "manifest.schema.json").read_text())
VENV_PY = str(REPO / ".venv" / "bin" / "python")


# ------------------------------------------------------------------------- a JSON Schema subset checker


def schema_errors(value, schema: dict = SCHEMA, root: dict | None = None, where: str = "$") -> list[str]:
    """The JSON Schema keywords deploy/manifest.schema.json uses (jsonschema is not a dependency)."""
    root = SCHEMA if root is None else root
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    errors: list[str] = []
    types = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
             "boolean": bool, "null": type(None)}
    if "type" in schema:
        wanted = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, types[t])
                 and not (t in ("integer", "number") and isinstance(value, bool)) for t in wanted)
        if not ok:
            return [f"{where}: {value!r} is not {wanted}"]
    if "oneOf" in schema:
        matches = [s for s in schema["oneOf"] if not schema_errors(value, s, root, where)]
        if len(matches) != 1:
            errors.append(f"{where}: matches {len(matches)} of oneOf")
    if "anyOf" in schema and not any(not schema_errors(value, s, root, where) for s in schema["anyOf"]):
        errors.append(f"{where}: matches none of anyOf")
    if "not" in schema and not schema_errors(value, schema["not"], root, where):
        errors.append(f"{where}: matches a forbidden form")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 1 << 30):
            errors.append(f"{where}: length {len(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, sub in value.items():
            if "propertyNames" in schema:
                errors += schema_errors(key, schema["propertyNames"], root, f"{where}.<{key}>")
            if key in schema.get("properties", {}):
                errors += schema_errors(sub, schema["properties"][key], root, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected key {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += schema_errors(sub, schema["additionalProperties"], root, f"{where}.{key}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1 << 30):
            errors.append(f"{where}: {len(value)} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += schema_errors(item, schema["items"], root, f"{where}[{i}]")
    return errors


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tflite(request) -> bytes:
    """A real float32 TFLite model (tests/runner_models.py, built once with TensorFlow and cached)."""
    cache = Path(request.config.cache.mkdir("runner_models"))
    return runner_models.cached_models(cache)["fp32"].read_bytes()


def base_manifest(blob: bytes, **changes) -> dict:
    manifest = {
        "format": "edgenas-model", "schema_version": "1.0", "name": "net", "arch": "runner-test",
        "space": "runner-test", "precision": "fp32", "labels": list(runner_models.LABELS),
        "input": {"size": runner_models.INPUT_SIZE, "layout": "NHWC", "channels": 3,
                  "mean": runner_models.MEAN, "std": runner_models.STD},
        "output": {"shape": [1, runner_models.NUM_CLASSES], "dtype": "float32"},
        "model": {"file": "model.tflite", "sha256": hashlib.sha256(blob).hexdigest(),
                  "bytes": len(blob)},
        "latency": {},
    }
    manifest.update(changes)
    return manifest


def make_folder(path: Path, blob: bytes, manifest: dict | str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.tflite").write_bytes(blob)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest or base_manifest(blob))
    (path / "manifest.json").write_text(text)
    return path


def crafted(tmp: Path, blob: bytes, case: str) -> Path:
    """One hostile or careless model folder per case; see CASES for the field each must be refused on."""
    folder = tmp / case
    sha = hashlib.sha256(blob).hexdigest()
    if case == "absolute-path":
        secret = tmp / "id_fleet"
        secret.write_bytes(blob)  # even a real model is refused: the name is what is wrong
        return make_folder(folder, blob, base_manifest(blob, model={"file": str(secret), "sha256": sha}))
    if case == "dotdot":
        (tmp / "x").write_bytes(blob)
        return make_folder(folder, blob, base_manifest(blob, model={"file": "../x", "sha256": sha}))
    if case == "symlink-out":
        outside = tmp / "outside.tflite"
        outside.write_bytes(blob)
        make_folder(folder, blob)
        (folder / "model.tflite").unlink()
        (folder / "model.tflite").symlink_to(outside)
        return folder
    if case == "not-tflite":
        junk = b"#!/bin/sh\necho owned\n" * 4
        return make_folder(folder, junk, base_manifest(junk))
    if case == "wrong-sha256":
        return make_folder(folder, blob, base_manifest(blob, model={"file": "model.tflite",
                                                                   "sha256": "0" * 64}))
    if case == "missing-sha256":
        return make_folder(folder, blob, base_manifest(blob, model={"file": "model.tflite"}))
    if case == "labels-path":
        return make_folder(folder, blob, base_manifest(blob, labels="/etc/passwd"))
    if case == "labels-too-many":
        return make_folder(folder, blob, base_manifest(blob, labels=["x"] * (rules.MAX_LABELS + 1)))
    if case == "future-major":
        return make_folder(folder, blob, base_manifest(blob, schema_version="2.0"))
    if case == "truncated-json":
        text = json.dumps(base_manifest(blob))
        return make_folder(folder, blob, text[: len(text) // 2])
    raise AssertionError(case)


CASES = {  # case: (field, words the one-line message must contain)
    "absolute-path": ("model.file", "absolute path"),
    "dotdot": ("model.file", "is a path"),
    "symlink-out": ("model.file", "symlink leading out"),
    "not-tflite": ("model.file", "not a TFLite model"),
    "wrong-sha256": ("model.sha256", "the manifest records 000000000000"),
    "missing-sha256": ("model.sha256", "missing"),
    "labels-path": ("labels", "never a file name or path"),
    "labels-too-many": ("labels", "65537 entries"),
    "future-major": ("schema_version", "newer manifest format"),
    "truncated-json": ("manifest.json", "not valid JSON"),
}


# --------------------------------------------------------------------------------- crafted folders


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_folder_is_refused_naming_the_field(tmp_path, tflite, case):
    folder = crafted(tmp_path, tflite, case)
    field, words = CASES[case]
    with pytest.raises(PackageError) as info:
        ModelPackage.load(folder)
    exc = info.value
    assert exc.field == field
    text = str(exc)
    assert "\n" not in text and text.startswith(f"{folder}: {field}: ") and words in text
    # fleet push reads the same way: the same message, refused before any device is touched
    with pytest.raises(PackageError, match=re.escape(f"{field}: ")):
        ModelPackage.open(folder)


def test_device_module_refuses_the_same_folders_on_a_bare_python(tmp_path, tflite):
    """The device side: the stdlib-only module, imported without edgenas or site-packages."""
    folders = {case: str(crafted(tmp_path, tflite, case)) for case in CASES}
    good = str(make_folder(tmp_path / "good", tflite))
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO / 'devices')!r})\n"
        "from edgenas_device import manifest as m\n"
        "out = {}\n"
        "for case, folder in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        out[case] = ['ok', m.read_manifest(folder).model.sha256]\n"
        "    except m.ManifestError as exc:\n"
        "        out[case] = [exc.field, str(exc)]\n"
        "out['loaded'] = sorted(k for k in sys.modules if k.split('.')[0] in ('edgenas', 'numpy'))\n"
        "print(json.dumps(out))\n"
    )
    argv = [sys.executable, "-I", "-S", "-c", script, json.dumps({**folders, "good": good})]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got.pop("loaded") == []
    assert got.pop("good") == ["ok", hashlib.sha256(tflite).hexdigest()]
    assert {case: field for case, (field, _) in got.items()} == {c: f for c, (f, _) in CASES.items()}


@pytest.mark.parametrize("changes, field", [
    ({"model": {"file": "model.tflite", "sha256": "X" * 64}}, "model.sha256"),
    ({"model": {"file": "model.tflite", "sha256": "0" * 64, "path": "/etc/passwd"}}, "model.path"),
    ({"model": {"file": "..", "sha256": "0" * 64}}, "model.file"),
    ({"model": {"file": "-rf", "sha256": "0" * 64}}, "model.file"),
    ({"model": {"file": "m\x00.tflite", "sha256": "0" * 64}}, "model.file"),
    ({"model": {"file": "C:model.tflite", "sha256": "0" * 64}}, "model.file"),
    ({"labels": ["ok", "x" * 257]}, "labels[1]"),
    ({"labels": ["ok", "bad\nline"]}, "labels[1]"),
    ({"labels": []}, "labels"),
    ({"labels": {"0": "zero"}}, "labels"),
    ({"classes": ["a"]}, "classes"),
    ({"format": "something-else"}, "format"),
    ({"schema_version": 1}, "schema_version"),
    ({"schema_version": "1.0", "version": 2}, "version"),
    ({"precision": "int4"}, "precision"),
    ({"input": {"size": True, "mean": [0.5], "std": [0.5]}}, "input.size"),
    ({"input": {"size": 99999, "mean": [0.5], "std": [0.5]}}, "input.size"),
    ({"input": {"size": [16, 16, 3], "mean": [0.5], "std": [0.5]}}, "input.size"),
    ({"input": {"size": 16, "mean": [0.5, 0.5], "std": [0.5], "channels": 3}}, "input.mean"),
    ({"input": {"size": 16, "mean": [0.5], "std": [0.0]}}, "input.std"),
    ({"input": {"size": 16, "mean": 0.5, "std": [0.5]}}, "input.mean"),
    ({"input": {"size": 16, "mean": [0.5], "std": [0.5], "layout": "HWC"}}, "input.layout"),
    ({"input": {"size": 16, "mean": [0.5], "std": [0.5], "normalization": {}}}, "input.normalization"),
    ({"input": {"size": 16, "std": [0.5]}}, "input.mean"),
    ({"output": {"shape": [1, 7]}}, "labels"),
    ({"output": {"activation": "sigmoid"}}, "output.activation"),
    ({"name": "../evil"}, "name"),
    ({"latency": {"pi": {"median_ms": -1.0}}}, "latency.pi.median_ms"),
    ({"search": "fast"}, "search"),
])
def test_validate_names_the_bad_field(changes, field):
    blob = b"\x1c\x00\x00\x00TFL3" + bytes(32)
    with pytest.raises(rules.ManifestError) as info:
        rules.validate(base_manifest(blob, **changes))
    assert info.value.field == field, str(info.value)


def test_json_level_tricks_are_refused(tmp_path, tflite):
    sha = hashlib.sha256(tflite).hexdigest()
    text = json.dumps(base_manifest(tflite))
    # a repeated key: one parser would check the first "file", another use the second
    dup = text.replace('"model": {', '"model": {"file": "../../x", ', 1)
    with pytest.raises(PackageError, match="appears twice"):
        ModelPackage.load(make_folder(tmp_path / "dup", tflite, dup))
    with pytest.raises(PackageError, match="NaN is not valid JSON"):
        ModelPackage.load(make_folder(tmp_path / "nan", tflite, text.replace("0.25", "NaN")))
    with pytest.raises(PackageError, match="nested too deeply"):
        ModelPackage.load(make_folder(tmp_path / "deep", tflite, "[" * 100000 + "]" * 100000))
    with pytest.raises(PackageError, match="must be a JSON object"):
        ModelPackage.load(make_folder(tmp_path / "list", tflite, "[]"))
    big = make_folder(tmp_path / "big", tflite)
    with open(big / "manifest.json", "wb") as handle:
        handle.truncate(rules.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(PackageError, match="larger than"):
        ModelPackage.load(big)
    # manifest.json itself a symlink out of the folder (say, to a file the attacker wants echoed)
    out = make_folder(tmp_path / "mlink", tflite)
    (tmp_path / "elsewhere.json").write_text(json.dumps(base_manifest(tflite)))
    (out / "manifest.json").unlink()
    (out / "manifest.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(PackageError, match="manifest.json: is a symlink leading out"):
        ModelPackage.load(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PackageError, match="manifest.json: missing"):
        ModelPackage.load(empty)
    assert sha  # the good manifest itself was fine: only the tricks failed
    assert ModelPackage.load(make_folder(tmp_path / "fine", tflite)).sha256 == sha


def test_model_size_and_truncation(tmp_path, tflite):
    folder = make_folder(tmp_path / "trunc", tflite)
    (folder / "model.tflite").write_bytes(tflite[:-10])
    with pytest.raises(PackageError, match=r"model.bytes: model.tflite has \d+ bytes, the manifest"):
        ModelPackage.load(folder)
    (folder / "model.tflite").write_bytes(tflite[:5])
    with pytest.raises(PackageError) as info:
        ModelPackage.load(folder)
    assert info.value.field == "model.file"
    (folder / "model.tflite").unlink()
    (folder / "model.tflite").mkdir()
    with pytest.raises(PackageError, match="model.file: model.tflite is not a regular file"):
        ModelPackage.load(folder)
    # a FIFO would block a plain open() forever waiting for a writer
    (folder / "model.tflite").rmdir()
    os.mkfifo(folder / "model.tflite")
    with pytest.raises(PackageError, match="model.file: model.tflite is not a regular file"):
        ModelPackage.load(folder)
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")
    with pytest.raises(PackageError, match="manifest.json: is not a regular file"):
        ModelPackage.load(folder)


def test_versions_and_unknown_keys(tmp_path, tflite):
    """Legacy ``version: 1`` reads as 1.0, a newer minor is read, unknown keys survive a rewrite."""
    legacy = base_manifest(tflite, version=1, x_tool={"kept": [1, 2]})
    del legacy["schema_version"]
    pkg = ModelPackage.load(make_folder(tmp_path / "legacy", tflite, legacy))
    assert pkg.manifest.schema_version == (1, 0) and pkg.data["x_tool"] == {"kept": [1, 2]}
    newer = base_manifest(tflite, schema_version="1.7", future_hint="ignored by 1.0 readers")
    newer["input"]["future_input_hint"] = 3
    pkg = ModelPackage.load(make_folder(tmp_path / "minor", tflite, newer))
    assert pkg.manifest.version == "1.7" and pkg.manifest.input.size == (16, 16)
    # symlinks that stay inside the folder are fine: only leaving the folder is refused
    inside = make_folder(tmp_path / "inside", tflite)
    (inside / "real.tflite").write_bytes(tflite)
    (inside / "model.tflite").unlink()
    (inside / "model.tflite").symlink_to("real.tflite")
    assert ModelPackage.load(inside).model_path.name == "real.tflite"


def test_a_real_model_round_trips_and_records_latency(tmp_path, tflite):
    folder = tmp_path / "pkg"
    manifest = base_manifest(tflite, provenance={"source": "unit test"}, extra_tool={"a": 1})
    manifest["model"] = {"file": "model.tflite", "sha256": "f" * 64}  # the writer computes it, not us
    written = ModelPackage.write(folder, manifest, model=tflite)
    loaded = ModelPackage.load(folder)
    sha = hashlib.sha256(tflite).hexdigest()
    assert written.sha256 == loaded.sha256 == sha and loaded.size == len(tflite)
    assert loaded.manifest_sha256 == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    assert loaded.manifest == written.manifest and loaded.data["extra_tool"] == {"a": 1}
    assert loaded.data["schema_version"] == rules.SCHEMA_VERSION and "version" not in loaded.data
    assert loaded.manifest.labels == tuple(runner_models.LABELS) and loaded.default_name == "net"
    pre = loaded.manifest.preprocessing()
    assert pre["size"] == [16, 16] and pre["mean"] == runner_models.MEAN and pre["layout"] == "NHWC"
    assert schema_errors(loaded.data) == []

    record = {"device": "pi", "median_ms": 3.25, "p90_ms": 3.5, "cv": 0.01, "noisy": 0, "threads": 1,
              "runtime": "litert", "runtime_version": "2.3.0", "peak_rss_kib": 51234, "created_at": 1.0,
              "result_json": "{...}"}
    assert record_latency(loaded, "pi", record, lock_dir=tmp_path / "locks")
    again = ModelPackage.load(folder)
    assert again.manifest.latency["pi"].median_ms == 3.25 and again.manifest.latency["pi"].noisy is False
    assert "result_json" not in again.data["latency"]["pi"] and again.sha256 == sha
    assert schema_errors(again.data) == []
    with pytest.raises(PackageError, match="median_ms"):
        record_latency(loaded, "pi", {"median_ms": float("nan")})
    # a folder whose model changed since it was measured is not stamped with the old number
    ModelPackage.write(folder, again.data, model=tflite + b"\x00" * 16)
    assert not record_latency(loaded, "pi2", record)
    assert "pi2" not in ModelPackage.load(folder).manifest.latency

    # an invalid manifest writes nothing, not even the model
    bad = base_manifest(tflite, labels="labels.txt")
    with pytest.raises(PackageError, match="labels"):
        ModelPackage.write(tmp_path / "never", bad, model=tflite)
    assert not (tmp_path / "never").exists()
    with pytest.raises(PackageError, match="not a TFLite model"):
        ModelPackage.write(tmp_path / "never", base_manifest(tflite), model=b"\x7fELF" + bytes(64))


def test_the_model_loads_in_a_real_interpreter(tmp_path, tflite):
    """What the package vouches for is what a TFLite runtime runs."""
    pkg = ModelPackage.write(tmp_path / "pkg", base_manifest(tflite), model=tflite)
    script = ("import sys\nfrom ai_edge_litert.interpreter import Interpreter\n"
              "i = Interpreter(model_path=sys.argv[1]); i.allocate_tensors()\n"
              "print([int(v) for v in i.get_output_details()[0]['shape']])\n")
    proc = subprocess.run([VENV_PY, "-c", script, str(pkg.model_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [1, len(pkg.manifest.labels)]


def test_schema_rejects_what_the_reader_rejects(tflite):
    good = base_manifest(tflite)
    assert schema_errors(good) == []
    for case_changes in ({"labels": "/etc/passwd"}, {"model": {"file": "../x", "sha256": "0" * 64}},
                         {"model": {"file": "/abs", "sha256": "0" * 64}},
                         {"model": {"file": "m.tflite", "sha256": "0" * 64, "path": "x"}},
                         {"model": {"file": "m.tflite"}}, {"schema_version": "2.0"},
                         {"classes": ["a"]}, {"labels": ["x"] * (rules.MAX_LABELS + 1)}):
        assert schema_errors(base_manifest(tflite, **case_changes)), case_changes


def test_importing_the_package_pulls_in_neither_torch_nor_tensorflow():
    script = ("import sys, edgenas.export.package, edgenas.export.package\n"
              "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))\n")
    proc = subprocess.run([VENV_PY, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
