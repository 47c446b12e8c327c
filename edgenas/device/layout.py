r"""The one on-device layout, and the checks every name read back from a device goes through.

::

    <workdir>/runner.pyz                                the on-device package (one zipapp file)
    <workdir>/bin/benchmark_model                       LiteRT's binary, for devices without Python
    <workdir>/.edgenas.lock/                            the device lock (edgenas.device.lock)
    <workdir>/cache/models/<sha256>.tflite              models measured by bench/measure (LRU-bounded)
    <workdir>/cache/manifests/<sha256>.json             their manifests, for predict (LRU-bounded)
    <workdir>/cache/inputs/<sha256-16><.ext>            inputs sent by predict/evaluate (LRU-bounded)
    <workdir>/models/<NAME>/<VERSION>/model.tflite      deployed models; VERSION = sha256[:12]
    <workdir>/models/<NAME>/<VERSION>/manifest.json
    <workdir>/models/<NAME>/current, previous -> VERSION

Everything a device answers is untrusted: a compromised board may claim any link target or file name.
Names read back are therefore matched against these exact shapes (:func:`version`, :func:`model_name`,
:func:`sha256`) before they are used for anything, and are never joined to a host path.
"""

from __future__ import annotations

import re

RUNNER = "runner.pyz"
BENCHMARK_BINARY = "bin/benchmark_model"
MODELS = "models"
CACHE = "cache"
MODEL_CACHE = "cache/models"
INPUT_CACHE = "cache/inputs"
MANIFEST_CACHE = "cache/manifests"
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
DEFAULT_CACHE_MIB = 512

_VERSION = re.compile(r"[0-9a-f]{12}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def version(value: str | None) -> str | None:
    """A deployed version name as the device reported it, or None when it is not one."""
    return value if value is not None and _VERSION.fullmatch(value) else None


def sha256(value: str | None) -> str | None:
    """A sha256 as the device reported it (lower-case hex), or None when it is not one."""
    return value if value is not None and _SHA256.fullmatch(value) else None


def model_name(value: str | None) -> str | None:
    """A deployed model name as the device reported it, or None when it is not one."""
    if value is None or value in ("cache",) or ".." in value or not _NAME.fullmatch(value):
        return None
    return value


def cached_model(sha: str) -> str:
    """Where ``bench`` keeps a model on the device (content-addressed)."""
    return f"{MODEL_CACHE}/{sha}.tflite"


def deployed(name: str, version_or_link: str, file: str = MODEL_FILE) -> str:
    return f"{MODELS}/{name}/{version_or_link}/{file}"


__all__ = ["BENCHMARK_BINARY", "CACHE", "INPUT_CACHE", "MANIFEST_CACHE", "MANIFEST_FILE", "MODELS",
           "MODEL_CACHE", "MODEL_FILE", "RUNNER", "cached_model", "deployed", "model_name", "sha256",
           "version"]
