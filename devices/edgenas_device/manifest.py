"""The model package's manifest: the rules the host and every device share, in one place.

A model package is a folder holding ``manifest.json`` and the TFLite file it names.  The exporter
writes it; ``bench``, ``fleet``, ``evaluate`` and the on-device runner read it, all through this
module, so a folder one of them accepts is a folder all of them accept.  It is stdlib only and runs on
Python >= 3.8: the host imports it as ``edgenas_device.manifest``, the device runs the same file.

Why so strict: a manifest is *input* — from another workspace, a colleague, a download, or a device
that was compromised.  The issues this closes: a manifest naming ``/home/me/.ssh/id_fleet`` or ``../x``
as its model got that file pushed to a fleet; a model without a sha256 was never verified; a file that
was not a TFLite model was pushed as ``ok``; a ``labels`` string made the runner read and return any
device file.  So:

* the model file is a plain name inside the folder (no separator, no ``..``, no NUL, not a symlink that
  leaves the folder), its sha256 is required and checked, and its FlatBuffer file identifier must be
  ``TFL3``;
* ``labels`` is a list of bounded strings, never a path;
* preprocessing fields are typed and bounded, ``precision`` is one the exporter writes;
* the manifest is versioned (``schema_version`` ``"MAJOR.MINOR"``).  A newer *major* version is refused
  with a message saying to upgrade: its fields may mean something this reader would get wrong.  A newer
  *minor* version of a known major is read: minor versions only add optional keys.

Unknown keys: tolerated and preserved (round-trip on rewrite) at the top level and inside ``input`` and
``output``, because tools add their own keys (provenance, search promises) and, during a rollout, an
older runner must still read a manifest a newer host wrote.  No reader acts on a key it does not know,
so an unknown key can neither redirect a file read nor change preprocessing.  Two exceptions, refused:
the ``model`` section (it names the bytes a device executes; a key this reader ignores there could mean
the writer expected something it does not get), and the legacy spellings older tools used
(``classes``, ``normalization`` ...), since ignoring those silently would give wrong predictions.

API: :func:`read_manifest` (a folder, model checked), :func:`read_package` (the same plus what was
checked), :func:`read_manifest_file` (one manifest file, no model check), :func:`parse` (bytes),
:func:`validate` (a dict), :func:`check_model_file` (a model file), :class:`ManifestError`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import stat
from typing import Any

FORMAT = "edgenas-model"
MANIFEST_FILE = "manifest.json"
DEFAULT_MODEL_FILE = "model.tflite"
SCHEMA_MAJOR = 1
SCHEMA_MINOR = 0
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")  # what `edgenas export` writes
LAYOUTS = ("NHWC", "NCHW")
DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64")
ACTIVATIONS = ("softmax", "none")
TFLITE_IDENTIFIER = b"TFL3"  # FlatBuffer file identifier of the TFLite schema, bytes 4..8

# Bounds: generous for any real classifier, small enough that a hostile file cannot exhaust a Pi.
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
MAX_MODEL_BYTES = 2 * 1024 ** 3  # FlatBuffers use 32-bit offsets: no TFLite file is 2 GiB or more
MIN_MODEL_BYTES = 8  # a root offset and the identifier
MAX_LABELS = 65536  # ImageNet-21k has 21,841 classes
MAX_LABEL_CHARS = 256
MAX_TEXT_CHARS = 4096  # arch ids, space names, runtime strings
MAX_FILE_NAME_BYTES = 255  # NAME_MAX on Linux
MAX_INPUT_SIDE = 8192
MAX_CHANNELS = 64
MAX_RANK = 8
MAX_DEVICE_NAME_CHARS = 128

_SCHEMA_RE = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# Spellings other tools (and older runners) used.  Refused, not ignored: see the module docstring.
_LEGACY_TOP = {
    "classes": "labels", "class_names": "labels", "normalization": "input.mean / input.std",
    "normalisation": "input.mean / input.std", "input_size": "input.size", "layout": "input.layout",
    "mean": "input.mean", "std": "input.std", "output_activation": "output.activation",
}
_LEGACY_INPUT = {
    "normalization": "input.mean / input.std", "normalisation": "input.mean / input.std",
    "resolution": "input.size", "npy": "input.npy_normalized",
}
_MODEL_KEYS = ("file", "sha256", "bytes")
# Optional top-level keys readers use, with the JSON type they must have.
_OPTIONAL_OBJECTS = ("arch_json", "accuracy", "parity", "calibration", "search", "provenance", "tools")


class ManifestError(ValueError):
    """A manifest or model file breaks the package rules.  ``field`` names what is wrong
    (``model.file``, ``labels``, ``manifest.json`` ...), so the one-line message says where to look."""

    def __init__(self, field: str, reason: str, path: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.path = path
        super().__init__((f"{path}: " if path else "") + field + ": " + reason)

    def at(self, path: str) -> ManifestError:
        """The same error, located at ``path`` (the manifest or folder it came from)."""
        return ManifestError(self.field, self.reason, path if self.path is None else self.path)


# ------------------------------------------------------------------------------------- typed manifest


@dataclasses.dataclass(frozen=True)
class Quantization:
    """A tensor's affine quantisation as the converter recorded it (the interpreter's own wins)."""

    scale: float
    zero_point: int


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How a picture becomes the model's input: resize to ``size``, pixels to ``pixel_range``, then
    ``(x - mean) / std`` per channel.  ``layout`` None means the manifest does not say (readers infer it
    from the model's input shape)."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    layout: str | None = None
    pixel_range: tuple[float, float] = (0.0, 1.0)
    npy_normalized: bool = True
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    quantization: Quantization | None = None

    def normalisation(self) -> tuple[list[float], list[float]]:
        """Per-channel ``(mean, std)`` for pixels on the 0..1 scale, whatever scale the manifest used."""
        lo, hi = self.pixel_range
        span = hi - lo
        mean = [(v - lo) / span for v in self.mean]
        std = [v / span for v in self.std]
        if len(mean) == 1:
            mean, std = mean * self.channels, std * self.channels
        return mean, std


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """The model's output; ``activation`` "softmax" means its outputs already are probabilities."""

    activation: str = "none"
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    quantization: Quantization | None = None


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """The model file the manifest vouches for: a plain name in the folder and its sha256."""

    file: str
    sha256: str
    bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class LatencyEntry:
    """One device's measured latency, as ``edgenas bench`` / ``fleet bench DIR`` record it."""

    median_ms: float
    p90_ms: float | None = None
    cv: float | None = None
    noisy: bool | None = None
    threads: int | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    peak_rss_kib: int | None = None
    created_at: float | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A validated manifest.  The typed fields are what readers act on; ``data`` is the whole JSON
    object (unknown keys included) for display, provenance and rewriting — use :meth:`to_dict`."""

    schema_version: tuple[int, int]
    precision: str
    labels: tuple[str, ...]
    input: InputSpec
    output: OutputSpec
    model: ModelRef
    name: str | None = None
    arch: str | None = None
    space: str | None = None
    latency: dict[str, LatencyEntry] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def version(self) -> str:
        return "{}.{}".format(*self.schema_version)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the JSON object this manifest was read from (safe to modify)."""
        return copy.deepcopy(self.data)

    def preprocessing(self) -> dict[str, Any]:
        """What ``predict`` needs, in one plain dict: labels, [H, W], layout, 0..1-scale mean/std."""
        mean, std = self.input.normalisation()
        return {
            "labels": list(self.labels),
            "size": list(self.input.size),
            "layout": self.input.layout,
            "channels": self.input.channels,
            "mean": mean,
            "std": std,
            "npy_normalized": self.input.npy_normalized,
            "output_is_probabilities": self.output.activation == "softmax",
            "precision": self.precision,
        }


# ----------------------------------------------------------------------------------------- checks


def _fail(field: str, reason: str) -> ManifestError:
    return ManifestError(field, reason)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(field, "must be an object, not " + _kind(value))
    return value


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, "must be an integer, not " + _kind(value))
    if not lo <= value <= hi:
        raise _fail(field, f"{value} is outside {lo}..{hi}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, "must be a number, not " + _kind(value))
    if not math.isfinite(value):
        raise _fail(field, "must be finite")
    return float(value)


def _text(value: Any, field: str, limit: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise _fail(field, "must be a string, not " + _kind(value))
    if not value or len(value) > limit:
        raise _fail(field, f"must be 1..{limit} characters, not {len(value)}")
    if _CONTROL_RE.search(value):
        raise _fail(field, "must not contain control characters")
    return value


def check_file_name(name: Any, field: str = "model.file") -> str:
    """A plain file name inside the package folder, or ManifestError.

    Refused: anything with a separator (``/`` or ``\\``), ``.`` and ``..``, NUL and control characters,
    ``:`` (a drive or stream on Windows hosts), and a leading ``.`` or ``-`` (hidden staging names on
    devices, options to the shell commands that handle the file).  Symlinks are checked where the
    folder is known (:func:`model_path`)."""
    if not isinstance(name, str):
        raise _fail(field, "must be a file name (a string), not " + _kind(name))
    if not name:
        raise _fail(field, "must not be empty")
    if "\x00" in name:
        raise _fail(field, "must not contain NUL")
    if name.startswith("/") or name.startswith("\\") or re.match(r"[A-Za-z]:", name):
        raise _fail(field, f"{name!r} is an absolute path; name a file inside the model folder")
    if "/" in name or "\\" in name:
        raise _fail(field, f"{name!r} is a path; name a file inside the model folder (no / or \\)")
    if name in (".", ".."):
        raise _fail(field, f"{name!r} is not a file name")
    if _CONTROL_RE.search(name) or ":" in name:
        raise _fail(field, f"{name!r} contains a control character or ':'")
    if name[0] in ".-":
        raise _fail(field, f"{name!r} must not start with '.' or '-'")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        raise _fail(field, f"is longer than {MAX_FILE_NAME_BYTES} bytes")
    return name


def _schema_version(obj: dict[str, Any]) -> tuple[int, int]:
    declared = obj.get("schema_version")
    legacy = obj.get("version")  # manifests before schema_version: "version": 1 meant 1.0
    if declared is None:
        if legacy is None:
            raise _fail("schema_version", f"missing (this reader understands {SCHEMA_MAJOR}.x)")
        major, minor = _int(legacy, "version", 0, 9999), 0
        shown = str(legacy)
    else:
        match = _SCHEMA_RE.fullmatch(declared) if isinstance(declared, str) else None
        if match is None:
            raise _fail("schema_version",
                        f"must be a string 'MAJOR.MINOR' such as '{SCHEMA_VERSION}', not {declared!r}")
        major, minor = int(match.group(1)), int(match.group(2))
        shown = declared
        if legacy is not None and legacy != major:
            raise _fail("version", f"{legacy!r} contradicts schema_version {declared}")
    if major > SCHEMA_MAJOR:
        raise _fail("schema_version", (
            f"{shown} is a newer manifest format than this reader understands ({SCHEMA_MAJOR}.x); "
            "upgrade edgenas on the host and the runner on the device"))
    if major < 1:
        raise _fail("schema_version", f"{shown} is not a manifest format version")
    return major, minor


def _labels(value: Any) -> tuple[str, ...]:
    if value is None:
        raise _fail("labels", "missing: list the class names, in output order")
    if isinstance(value, str):
        raise _fail("labels", "must be a list of strings, not a string (labels are never a file name "
                              "or path: list them in the manifest)")
    if not isinstance(value, list):
        raise _fail("labels", "must be a list of strings, not " + _kind(value))
    if not 1 <= len(value) <= MAX_LABELS:
        raise _fail("labels", f"has {len(value)} entries; 1..{MAX_LABELS} allowed")
    for i, label in enumerate(value):
        _text(label, f"labels[{i}]", MAX_LABEL_CHARS)
    return tuple(value)


def _shape(value: Any, field: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_RANK:
        raise _fail(field, f"must be a list of 1..{MAX_RANK} integers")
    return tuple(_int(v, f"{field}[{i}]", -1, 2 ** 31 - 1) for i, v in enumerate(value))


def _quantization(value: Any, field: str) -> Quantization | None:
    if value is None:
        return None
    obj = _object(value, field)
    scale = _number(obj.get("scale", 0.0), field + ".scale")
    if scale < 0:
        raise _fail(field + ".scale", "must not be negative")
    zero = _int(obj.get("zero_point", 0), field + ".zero_point", -(2 ** 31), 2 ** 31 - 1)
    return Quantization(scale, zero)


def _dtype(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if value not in DTYPES:
        raise _fail(field, "{!r} is not one of {}".format(value, ", ".join(DTYPES)))
    return str(value)


def _floats(value: Any, field: str, channels: int | None) -> tuple[float, ...]:
    if value is None:
        raise _fail(field, "missing: give one value per channel (or one for all)")
    if not isinstance(value, list):
        raise _fail(field, "must be a list of numbers (one per channel, or one for all), not "
                    + _kind(value))
    out = tuple(_number(v, f"{field}[{i}]") for i, v in enumerate(value))
    if channels is None and not 1 <= len(out) <= MAX_CHANNELS:
        raise _fail(field, f"has {len(out)} values; give 1..{MAX_CHANNELS}")
    if channels is not None and len(out) not in (1, channels):
        raise _fail(field, f"has {len(out)} values for {channels} channels (give 1 or {channels})")
    return out


def _input(value: Any) -> InputSpec:
    if value is None:
        raise _fail("input", "missing: size, mean and std tell every reader how to feed the model")
    obj = _object(value, "input")
    for key, instead in _LEGACY_INPUT.items():
        if key in obj:
            raise _fail("input." + key, f"is not read by edgenas; spell it {instead}")
    size_raw = obj.get("size")
    if size_raw is None:
        raise _fail("input.size", "missing: the side (or [H, W]) images are resized to")
    if isinstance(size_raw, list):
        if len(size_raw) != 2:
            raise _fail("input.size", "must be one integer or [H, W]")
        size = (_int(size_raw[0], "input.size[0]", 1, MAX_INPUT_SIDE),
                _int(size_raw[1], "input.size[1]", 1, MAX_INPUT_SIDE))
    else:
        side = _int(size_raw, "input.size", 1, MAX_INPUT_SIDE)
        size = (side, side)
    layout = obj.get("layout")
    if layout is not None and layout not in LAYOUTS:
        raise _fail("input.layout", "{!r} is not one of {}".format(layout, ", ".join(LAYOUTS)))
    channels = obj.get("channels")
    if channels is not None:
        channels = _int(channels, "input.channels", 1, MAX_CHANNELS)
    mean = _floats(obj.get("mean"), "input.mean", channels)
    std = _floats(obj.get("std"), "input.std", channels)
    if channels is None:
        widths = {len(mean), len(std)} - {1}
        if len(widths) > 1:
            raise _fail("input.std", f"has {len(std)} values but input.mean {len(mean)}")
        channels = widths.pop() if widths else 3
    if any(v <= 0 for v in std):
        raise _fail("input.std", "must be positive (it divides)")
    pixel_range = (0.0, 1.0)
    if obj.get("pixel_range") is not None:
        raw = obj["pixel_range"]
        if not isinstance(raw, list) or len(raw) != 2:
            raise _fail("input.pixel_range", "must be [low, high]")
        pixel_range = (_number(raw[0], "input.pixel_range[0]"), _number(raw[1], "input.pixel_range[1]"))
        if not pixel_range[0] < pixel_range[1]:
            raise _fail("input.pixel_range", "low must be below high")
    npy = obj.get("npy_normalized", True)
    if not isinstance(npy, bool):
        raise _fail("input.npy_normalized", "must be true or false, not " + _kind(npy))
    shape = _shape(obj["shape"], "input.shape") if obj.get("shape") is not None else None
    return InputSpec(size=size, mean=mean, std=std, channels=channels, layout=layout,
                     pixel_range=pixel_range, npy_normalized=npy, shape=shape,
                     dtype=_dtype(obj.get("dtype"), "input.dtype"),
                     quantization=_quantization(obj.get("quantization"), "input.quantization"))


def _output(value: Any) -> OutputSpec:
    if value is None:
        return OutputSpec()
    obj = _object(value, "output")
    activation = obj.get("activation", "none")
    if activation not in ACTIVATIONS:
        raise _fail("output.activation",
                    "{!r} is not one of {}".format(activation, ", ".join(ACTIVATIONS)))
    shape = _shape(obj["shape"], "output.shape") if obj.get("shape") is not None else None
    return OutputSpec(activation=activation, shape=shape,
                      dtype=_dtype(obj.get("dtype"), "output.dtype"),
                      quantization=_quantization(obj.get("quantization"), "output.quantization"))


def _model(value: Any) -> ModelRef:
    if value is None:
        raise _fail("model", "missing: {\"file\": ..., \"sha256\": ...} names and vouches for the model")
    obj = _object(value, "model")
    unknown = sorted(set(obj) - set(_MODEL_KEYS))
    if unknown:
        raise _fail("model." + unknown[0], "is not a known key of the model section (known: {})".format(
            ", ".join(_MODEL_KEYS)))
    if "file" not in obj:
        raise _fail("model.file", "missing: the model file's name in the folder")
    name = check_file_name(obj["file"])
    sha = obj.get("sha256")
    if sha is None:
        raise _fail("model.sha256", "missing: a package records its model's sha256 so every reader "
                                    "can check the file")
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
        raise _fail("model.sha256", "must be 64 lower-case hex digits")
    size = obj.get("bytes")
    if size is not None:
        size = _int(size, "model.bytes", MIN_MODEL_BYTES, MAX_MODEL_BYTES - 1)
    return ModelRef(name, sha, size)


def _optional_float(obj: dict[str, Any], key: str, field: str) -> float | None:
    return None if obj.get(key) is None else _number(obj[key], field + "." + key)


def _latency(value: Any) -> dict[str, LatencyEntry]:
    if value is None:
        return {}
    out: dict[str, LatencyEntry] = {}
    for device, raw in _object(value, "latency").items():
        field = "latency." + str(device)[:MAX_DEVICE_NAME_CHARS]
        check_device_name(device, field)
        out[device] = latency_entry(raw, field)
    return out


def check_device_name(name: Any, field: str = "latency") -> str:
    """A device name as a key of the latency section: 1..128 characters, no control characters."""
    return _text(name, field, MAX_DEVICE_NAME_CHARS)


def latency_entry(raw: Any, field: str = "latency") -> LatencyEntry:
    """A validated latency record (``median_ms`` > 0 required; the rest typed when present)."""
    obj = _object(raw, field)
    median = _number(obj.get("median_ms"), field + ".median_ms") if "median_ms" in obj else None
    if median is None or median <= 0:
        raise _fail(field + ".median_ms", "must be a positive number of milliseconds")
    noisy = obj.get("noisy")
    if noisy is not None and not isinstance(noisy, (bool, int)):
        raise _fail(field + ".noisy", "must be true or false")
    threads = obj.get("threads")
    rss = obj.get("peak_rss_kib")
    text = {}
    for key in ("runtime", "runtime_version"):
        text[key] = None if obj.get(key) is None else _text(obj[key], field + "." + key)
    return LatencyEntry(
        median_ms=median,
        p90_ms=_optional_float(obj, "p90_ms", field),
        cv=_optional_float(obj, "cv", field),
        noisy=None if noisy is None else bool(noisy),
        threads=None if threads is None else _int(threads, field + ".threads", 0, 4096),
        runtime=text["runtime"],
        runtime_version=text["runtime_version"],
        peak_rss_kib=None if rss is None else _int(rss, field + ".peak_rss_kib", 0, 2 ** 53),
        created_at=_optional_float(obj, "created_at", field),
    )


def validate(obj: Any) -> Manifest:
    """Check a manifest (a parsed JSON object) against the package rules; return it typed.

    Raises :class:`ManifestError` naming the first field that is wrong.  Checks the manifest only:
    the model file is checked by :func:`check_model_file` (or all at once by :func:`read_manifest`)."""
    if not isinstance(obj, dict):
        raise _fail("manifest", "must be a JSON object, not " + _kind(obj))
    fmt = obj.get("format")
    if fmt != FORMAT:
        raise _fail("format", "{} (an edgenas model manifest says \"format\": \"{}\")".format(
            "missing" if fmt is None else f"{fmt!r} is not {FORMAT!r}", FORMAT))
    version = _schema_version(obj)
    for key, instead in _LEGACY_TOP.items():
        if key in obj:
            raise _fail(key, f"is not read by edgenas; spell it {instead}")
    precision = obj.get("precision")
    if precision not in PRECISIONS:
        raise _fail("precision", "{} (one of {})".format(
            "missing" if precision is None else f"{precision!r} is not known",
            ", ".join(PRECISIONS)))
    labels = _labels(obj.get("labels"))
    inp = _input(obj.get("input"))
    out = _output(obj.get("output"))
    model = _model(obj.get("model"))
    name = obj.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME_RE.fullmatch(name)):
        raise _fail("name", "must be 1..64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    arch = None if obj.get("arch") is None else _text(obj["arch"], "arch")
    space = None if obj.get("space") is None else _text(obj["space"], "space")
    for key in _OPTIONAL_OBJECTS:
        if obj.get(key) is not None:
            _object(obj[key], key)
    for key in ("macs", "params"):
        if obj.get(key) is not None:
            _int(obj[key], key, 0, 2 ** 63 - 1)
    latency = _latency(obj.get("latency"))
    classes = None if out.shape is None or -1 in out.shape else _product(out.shape[1:])
    if classes is not None and len(labels) != classes:
        raise _fail("labels", f"has {len(labels)} entries but the model outputs {classes} classes "
                              f"(output.shape {list(out.shape)})")
    return Manifest(schema_version=version, precision=precision, labels=labels, input=inp, output=out,
                    model=model, name=name, arch=arch, space=space, latency=latency,
                    data=copy.deepcopy(obj))


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


# ------------------------------------------------------------------------------------------- files


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two readers must never see two manifests: some JSON parsers keep the first of a repeated key,
    # Python keeps the last, so a repeated "file" could name one model to the checker and another to
    # the device.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def parse(data: bytes | str) -> Manifest:
    """Decode manifest JSON (no NaN/Infinity, no repeated keys, bounded size) and validate it."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise _fail(MANIFEST_FILE, f"is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError as exc:
        raise _fail(MANIFEST_FILE, f"is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise _fail(MANIFEST_FILE, f"is not valid JSON (line {exc.lineno} column {exc.colno}: "
                                   f"{exc.msg}); truncated or corrupt") from None
    except ValueError as exc:
        raise _fail(MANIFEST_FILE, f"is not valid JSON ({exc})") from None
    except RecursionError:
        raise _fail(MANIFEST_FILE, "is nested too deeply") from None
    return validate(obj)


def _inside(folder_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real != folder_real and os.path.commonpath([folder_real, real]) == folder_real


def _open_nonblocking(path: str) -> Any:
    # O_NONBLOCK: opening a FIFO planted as "model.tflite" must not wait forever for a writer; the
    # fstat that follows refuses anything but a regular file (for which the flag changes nothing).
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    return os.fdopen(os.open(path, flags), "rb")


def _read_bounded(path: str, limit: int, field: str) -> bytes:
    try:
        with _open_nonblocking(path) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _fail(field, "is not a regular file")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise _fail(field, "missing") from None
    except IsADirectoryError:
        raise _fail(field, "is not a regular file") from None
    except OSError as exc:
        raise _fail(field, f"unreadable ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise _fail(field, f"is larger than {limit} bytes")
    return data


def read_manifest_file(path: str) -> Manifest:
    """Read and validate one manifest file (bounded read); the model it names is not checked.

    For readers given a manifest and a model path separately (``runner predict --manifest``): check
    the model with ``check_model_file(model, manifest.model.sha256)``."""
    try:
        return parse(_read_bounded(str(path), MAX_MANIFEST_BYTES, MANIFEST_FILE))
    except ManifestError as exc:
        raise exc.at(str(path)) from None


def model_path(folder: str, name: str) -> str:
    """``folder/name`` after checking that ``name`` is a plain name and the file (symlinks followed)
    stays inside ``folder``; the path returned is the resolved one: what is checked is what is used."""
    check_file_name(name)
    folder_real = os.path.realpath(str(folder))
    joined = os.path.join(folder_real, name)
    if not _inside(folder_real, joined):
        target = os.path.realpath(joined)
        raise _fail("model.file", f"{name!r} is a symlink leading out of the model folder (to {target})")
    return os.path.realpath(joined)


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model file as checked: where it is, its sha256 and its size."""

    path: str
    sha256: str
    size: int


def check_model_file(path: str, sha256: str | None = None, size: int | None = None) -> ModelFile:
    """Check that ``path`` is a TFLite model (a regular file, 8 bytes to 2 GiB, FlatBuffer identifier
    ``TFL3`` at bytes 4..8) and, when given, has ``size`` bytes and the ``sha256``.

    Everything is read from one open file, so the bytes hashed are the bytes whose identifier was
    checked.  Raises ManifestError (field ``model.file``, ``model.bytes`` or ``model.sha256``)."""
    shown = os.path.basename(str(path))
    digest = hashlib.sha256()
    try:
        with _open_nonblocking(str(path)) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _fail("model.file", f"{shown} is not a regular file")
            actual = info.st_size
            if actual < MIN_MODEL_BYTES or actual >= MAX_MODEL_BYTES:
                raise _fail("model.file", f"{shown} has {actual} bytes; a TFLite model has "
                                          f"{MIN_MODEL_BYTES}..{MAX_MODEL_BYTES - 1}")
            if size is not None and actual != size:
                raise _fail("model.bytes", f"{shown} has {actual} bytes, the manifest records {size} "
                                           "(file changed or truncated)")
            head = handle.read(MIN_MODEL_BYTES)
            if head[4:8] != TFLITE_IDENTIFIER:
                raise _fail("model.file", f"{shown} is not a TFLite model (no 'TFL3' FlatBuffer "
                                          "identifier at bytes 4..8)")
            digest.update(head)
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise _fail("model.file", f"{shown} is missing") from None
    except IsADirectoryError:
        raise _fail("model.file", f"{shown} is not a regular file") from None
    except ManifestError:
        raise
    except OSError as exc:
        raise _fail("model.file", f"{shown} is unreadable ({exc.strerror or exc})") from None
    got = digest.hexdigest()
    if sha256 is not None and got != sha256:
        raise _fail("model.sha256", f"{shown} has sha256 {got[:12]}..., the manifest records "
                                    f"{str(sha256)[:12]}... (file changed or corrupt after export)")
    return ModelFile(str(path), got, actual)


@dataclasses.dataclass(frozen=True)
class Package:
    """A model folder as checked by :func:`read_package`."""

    folder: str
    manifest_path: str
    manifest_sha256: str
    manifest: Manifest
    model: ModelFile


def read_package(folder: str) -> Package:
    """Read ``folder/manifest.json`` and check the model it names, all by the package rules.

    Raises ManifestError located at the folder (or the manifest) and naming the field."""
    folder = str(folder)
    if not os.path.isdir(folder):
        raise ManifestError("folder", "not a folder (give the folder holding manifest.json and its "
                                      "model)", folder)
    folder_real = os.path.realpath(folder)
    manifest_path = os.path.join(folder_real, MANIFEST_FILE)
    try:
        if not os.path.lexists(manifest_path):
            raise _fail(MANIFEST_FILE, "missing (not a model package: `edgenas export` writes "
                                       "manifest.json beside the model)")
        if os.path.islink(manifest_path) and not _inside(folder_real, manifest_path):
            raise _fail(MANIFEST_FILE, "is a symlink leading out of the model folder")
        raw = _read_bounded(manifest_path, MAX_MANIFEST_BYTES, MANIFEST_FILE)
        manifest = parse(raw)
        path = model_path(folder_real, manifest.model.file)
        model = check_model_file(path, manifest.model.sha256, manifest.model.bytes)
    except ManifestError as exc:
        raise exc.at(folder) from None
    return Package(folder_real, manifest_path, hashlib.sha256(raw).hexdigest(), manifest, model)


def read_manifest(folder: str) -> Manifest:
    """The validated manifest of a model folder, its model file checked (name, TFL3, size, sha256)."""
    return read_package(folder).manifest
