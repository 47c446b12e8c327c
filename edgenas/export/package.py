"""A model package on the host: the only reader and the only writer of ``manifest.json``.

The rules (plain model file name inside the folder, sha256 required and checked, ``TFL3`` identifier,
labels a list, typed preprocessing, versioned schema) live in ``edgenas_device.manifest``, the module
the on-device runner uses too, so host and device accept exactly the same folders.  This module adds
what only the host does: atomic writes, the per-device latency section, and errors the CLI prints.

Importing it must stay cheap: no torch, no TensorFlow (``edgenas bench`` and ``fleet push`` read
packages; they should not pay seconds of start-up for JSON).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas_device import manifest as rules
from edgenas_device.manifest import (
    DEFAULT_MODEL_FILE,
    FORMAT,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
)

from edgenas.core.errors import EdgeNASError
from edgenas.core.files import PRIVATE_FILE_MODE, atomic_write_bytes

log = logging.getLogger(__name__)

VERSION_HEX = 12  # version = the first 12 hex digits of the sha256: deterministic, so idempotent
MODEL_FILE = DEFAULT_MODEL_FILE


def version_of(sha256: str) -> str:
    """The version name a model with this sha256 gets on every device."""
    return sha256[:VERSION_HEX]


# The keys of a latency record the manifest keeps (the store keeps the full measurement).
LATENCY_KEYS = ("median_ms", "p90_ms", "cv", "noisy", "threads", "runtime", "runtime_version",
                "peak_rss_kib", "created_at")


def kept_mode(path: Path) -> int:
    """The permission bits a rewrite of ``path`` keeps: the existing file's, else private (0600).

    Why: a model folder is the user's, not the workspace's.  ``bench`` records each device's latency
    in ``manifest.json`` by writing a new file and renaming it over the old one; with the atomic
    writer's private default that silently turned a shared folder's 0644 manifest into 0600, and
    every other reader of the folder (a team's model share, a web server, another account's
    ``fleet push``) lost it.  New files stay private, as before; set-id and sticky bits are dropped."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777  # never set-id or sticky bits
    except OSError:
        return PRIVATE_FILE_MODE


class PackageError(EdgeNASError, ManifestError):
    """A model folder breaks the package rules.  An :class:`EdgeNASError` (the CLI prints it as one
    line) and a :class:`ManifestError` (``field`` names what is wrong)."""

    @classmethod
    def from_manifest_error(cls, exc: ManifestError) -> PackageError:
        return cls(exc.field, exc.reason, exc.path)


@dataclass(frozen=True)
class ModelPackage:
    """A checked model folder: its typed manifest, and the model file with the sha256 it was found to
    have (equal to the manifest's: :meth:`load` refuses anything else)."""

    folder: Path
    manifest: Manifest
    model_path: Path
    sha256: str
    size: int
    manifest_path: Path
    manifest_sha256: str

    @property
    def directory(self) -> Path:
        """Alias of :attr:`folder` (the name older callers use)."""
        return self.folder

    @property
    def data(self) -> dict[str, Any]:
        """The manifest as a plain JSON object (a deep copy: safe to modify and write back)."""
        return self.manifest.to_dict()

    @property
    def default_name(self) -> str:
        """The model's name on devices when none is given: the manifest's ``name``, else the
        folder's, reduced to the characters device paths allow."""
        raw = self.manifest.name or self.folder.resolve().name
        return re.sub(r"[^A-Za-z0-9._-]", "-", raw).lstrip("._-")[:64] or "model"

    @property
    def size_bytes(self) -> int:
        """The model file's size (what the benchmark backends record)."""
        return self.size

    @property
    def version(self) -> str:
        """The folder name this model gets on every device (``models/NAME/<version>``)."""
        return version_of(self.sha256)

    @property
    def bytes_total(self) -> int:
        """Model plus manifest: what a push uploads."""
        return self.size + self.manifest_path.stat().st_size

    # ------------------------------------------------------------------------------------- read

    @classmethod
    def load(cls, folder: Path | str) -> ModelPackage:
        """Read and check a model folder (a ``model.tflite`` or ``manifest.json`` path means its
        folder).  Raises :class:`PackageError` naming the folder and the field."""
        path = Path(folder)
        if path.is_file() and (path.name == MANIFEST_FILE or path.suffix == ".tflite"):
            path = path.parent
        try:
            checked = rules.read_package(str(path))
        except ManifestError as exc:
            raise PackageError.from_manifest_error(exc) from None
        return cls(folder=path, manifest=checked.manifest, model_path=Path(checked.model.path),
                   sha256=checked.model.sha256, size=checked.model.size,
                   manifest_path=path / MANIFEST_FILE, manifest_sha256=checked.manifest_sha256)

    @classmethod
    def open(cls, path: Path | str) -> ModelPackage:
        """:meth:`load` for a path a user typed: a model folder, or a file inside one; a missing
        folder is a :class:`PackageError` that says what a model folder is."""
        path = Path(path)
        if path.is_file():
            path = path.parent
        if not path.is_dir():
            raise PackageError("folder", "no such model folder (give the folder holding model.tflite "
                               "and manifest.json, as `edgenas export` writes it)", str(path))
        return cls.load(path)

    # ------------------------------------------------------------------------------------ write

    @classmethod
    def write(cls, folder: Path | str, manifest: Mapping[str, Any] | Manifest, *,
              model: bytes | None = None) -> ModelPackage:
        """Write ``folder/manifest.json`` (and, given ``model``, the model file first), atomically.

        The model's sha256 and size are computed here, never taken from the caller; ``format`` and
        ``schema_version`` are set to this version's.  The manifest is validated before anything is
        written, so an invalid one leaves the folder as it was."""
        folder = Path(folder)
        data = manifest.to_dict() if isinstance(manifest, Manifest) else copy.deepcopy(dict(manifest))
        data.pop("version", None)  # the pre-schema_version spelling
        data.pop("schema_version", None)
        data.pop("format", None)
        data = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **data}
        ref = dict(data.get("model") or {})
        ref.setdefault("file", DEFAULT_MODEL_FILE)
        try:
            name = rules.check_file_name(ref["file"])
            target = Path(rules.model_path(str(folder), name)) if folder.exists() else folder / name
            if model is not None:
                if model[4:8] != rules.TFLITE_IDENTIFIER:
                    raise ManifestError("model.file", f"{name} is not a TFLite model (no 'TFL3' "
                                                      "FlatBuffer identifier at bytes 4..8)")
                sha, size = hashlib.sha256(model).hexdigest(), len(model)
            else:
                checked = rules.check_model_file(str(target))
                sha, size = checked.sha256, checked.size
            ref.update(sha256=sha, bytes=size)
            data["model"] = {k: ref[k] for k in ("file", "sha256", "bytes")}
            typed = rules.validate(data)
            blob = json.dumps(data, indent=2, allow_nan=False).encode("utf-8") + b"\n"
        except ManifestError as exc:
            raise PackageError.from_manifest_error(exc.at(str(folder))) from None
        except ValueError as exc:  # NaN/Infinity somewhere in the free-form sections
            raise PackageError("manifest", f"cannot be written as JSON ({exc})", str(folder)) from None
        if model is not None:
            atomic_write_bytes(target, model, mode=kept_mode(target))
        manifest_path = folder / MANIFEST_FILE
        atomic_write_bytes(manifest_path, blob, mode=kept_mode(manifest_path))
        return cls(folder=folder, manifest=typed, model_path=target, sha256=sha, size=size,
                   manifest_path=manifest_path, manifest_sha256=hashlib.sha256(blob).hexdigest())


def record_latency(package: ModelPackage, device: str, record: Mapping[str, Any], *,
                   lock_dir: Path | str | None = None) -> bool:
    """Set ``manifest["latency"][device]`` from a bench record: the folder says where the model was
    measured and how fast.  Replaces ``edgenas.measure.bench._record_in_manifest``.

    Runs under an exclusive ``flock`` on ``lock_dir/.manifest-<sha>.lock`` (default: the model folder),
    because two devices may finish the same model at once; re-reads the manifest under the lock and
    writes it atomically.  Returns False, logging why, when nothing was recorded: a read-only folder
    (the measurement is still in the store), or a folder whose model changed since it was measured.
    Raises :class:`PackageError` for a record that is not a valid latency entry."""
    try:
        rules.check_device_name(device, "latency (device name)")
        entry = {k: record.get(k) for k in LATENCY_KEYS if record.get(k) is not None}
        if isinstance(entry.get("noisy"), int) and not isinstance(entry.get("noisy"), bool):
            entry["noisy"] = bool(entry["noisy"])
        rules.latency_entry(entry, "latency." + device)
    except ManifestError as exc:
        raise PackageError.from_manifest_error(exc) from None
    locks = Path(lock_dir) if lock_dir is not None else package.folder
    try:
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f".manifest-{package.sha256[:16]}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        log.warning("%s: latency for %s not recorded in the manifest (no lock: %s)",
                    package.folder, device, exc.strerror or exc)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = rules.read_manifest_file(str(package.manifest_path))
        except ManifestError as exc:
            log.warning("latency for %s not recorded: %s", device, exc)
            return False
        if current.model.sha256 != package.sha256:
            log.warning("%s: the model changed since it was measured; latency for %s not recorded",
                        package.folder, device)
            return False
        data = current.to_dict()
        latency = data.get("latency") if isinstance(data.get("latency"), dict) else {}
        latency[device] = entry
        data["latency"] = latency
        blob = json.dumps(data, indent=2, allow_nan=False).encode("utf-8") + b"\n"
        try:
            atomic_write_bytes(package.manifest_path, blob, mode=kept_mode(package.manifest_path))
        except OSError as exc:
            log.warning("%s: latency for %s not recorded in the manifest (%s)", package.folder, device,
                        exc.strerror or exc)
            return False
        return True
    finally:
        os.close(fd)


__all__ = ["LATENCY_KEYS", "Manifest", "ManifestError", "ModelPackage", "PackageError",
           "record_latency"]
