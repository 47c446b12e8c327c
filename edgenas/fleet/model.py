"""A model folder on the host as the fleet sees it: a checked :class:`~edgenas.export.package.ModelPackage`
plus the version name it gets on devices.

The folder is read by :meth:`ModelPackage.load`, the one reader every command shares, so ``fleet push``
accepts exactly what ``fleet bench``, ``edgenas bench`` and the on-device runner accept: the model file
a plain name inside the folder, its sha256 recorded and matching, a real TFLite file, labels a list.
A model converted elsewhere ships with a hand-written manifest that follows the same schema
(deploy/manifest.schema.json); ``ModelPackage.write`` fills in the sha256 for it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.core.files import sha256_file  # noqa: F401  (re-exported)
from edgenas.export.package import ModelPackage, PackageError
from edgenas.fleet.common import FleetError, validate_model_name

VERSION_HEX = 12  # version = first 12 hex digits of the model's sha256: deterministic, so idempotent
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"


def version_of(sha256: str) -> str:
    return sha256[:VERSION_HEX]


@dataclass(frozen=True)
class LocalModel:
    """A model ready to push: a thin view of its :class:`ModelPackage` with the names fleet code uses.
    ``version`` names its directory on every device; ``manifest`` is the manifest as a JSON object."""

    package: ModelPackage

    @property
    def directory(self) -> Path:
        return self.package.folder

    @property
    def model_path(self) -> Path:
        return self.package.model_path

    @property
    def manifest_path(self) -> Path:
        return self.package.manifest_path

    @functools.cached_property
    def manifest(self) -> dict[str, Any]:
        return self.package.data

    @property
    def sha256(self) -> str:
        return self.package.sha256

    @property
    def manifest_sha256(self) -> str:
        return self.package.manifest_sha256

    @property
    def size(self) -> int:
        return self.package.size

    @property
    def size_bytes(self) -> int:
        """The model file's size (what the benchmark backends record)."""
        return self.package.size

    @property
    def version(self) -> str:
        return version_of(self.sha256)

    @property
    def default_name(self) -> str:
        """The model name when ``--name`` is not given: the manifest's ``name``, else the folder's."""
        return self.package.default_name

    @property
    def bytes_total(self) -> int:
        return self.package.bytes_total


def load_model_dir(directory: Path | str) -> LocalModel:
    """Read and check a model folder; raises FleetError naming the folder and the field."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FleetError(f"{directory}: not a folder (give the folder holding model.tflite and "
                         "manifest.json, as `edgenas export` writes it)")
    try:
        return LocalModel(ModelPackage.load(directory))
    except PackageError as exc:
        raise FleetError(f"{exc}; refusing to push it") from None


def resolve_name(model: LocalModel | None, name: str | None) -> str:
    return validate_model_name(name or (model.default_name if model else ""))
