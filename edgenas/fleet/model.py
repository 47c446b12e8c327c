"""A model folder on the host as the fleet sees it: ``model.tflite`` + ``manifest.json``, its sha256 and
the version name it gets on devices.

Why not :func:`edgenas.export.read_manifest`: that imports torch and TensorFlow (seconds) and accepts
only manifests the exporter wrote, while a fleet push should also ship a model converted elsewhere with
a hand-written manifest.  The checks that matter for a rollout are kept: the manifest is valid JSON and,
when it records the model's sha256, the file still has it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgenas.files import sha256_file  # noqa: F401  (re-exported)
from edgenas.fleet.common import FleetError, validate_model_name

VERSION_HEX = 12  # version = first 12 hex digits of the model's sha256: deterministic, so idempotent
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"



def version_of(sha256: str) -> str:
    return sha256[:VERSION_HEX]


@dataclass(frozen=True)
class LocalModel:
    """A model ready to push.  ``version`` names its directory on every device."""

    directory: Path
    model_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    sha256: str
    manifest_sha256: str
    size: int

    @property
    def version(self) -> str:
        return version_of(self.sha256)

    @property
    def default_name(self) -> str:
        """The model name when ``--name`` is not given: the manifest's ``name``, else the folder's."""
        raw = str(self.manifest.get("name") or self.directory.resolve().name)
        return re.sub(r"[^A-Za-z0-9._-]", "-", raw).lstrip("._-")[:64] or "model"

    @property
    def bytes_total(self) -> int:
        return self.size + self.manifest_path.stat().st_size


def load_model_dir(directory: Path | str) -> LocalModel:
    """Read and check a model folder; raises FleetError naming the problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FleetError(f"{directory}: not a folder (give the folder holding model.tflite and "
                         "manifest.json, as `edgenas export` writes it)")
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise FleetError(f"{directory}: no {MANIFEST_FILE} (a model is pushed with its manifest: "
                         "labels and normalisation for predict)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FleetError(f"{manifest_path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise FleetError(f"{manifest_path}: the manifest must be a JSON object")
    model_info = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    model_path = directory / str(model_info.get("file") or MODEL_FILE)
    if not model_path.is_file():
        raise FleetError(f"{directory}: no {model_path.name} beside the manifest")
    sha = sha256_file(model_path)
    recorded = model_info.get("sha256")
    if recorded and recorded != sha:
        raise FleetError(
            f"{model_path}: sha256 {sha[:12]}… does not match the manifest's {str(recorded)[:12]}… "
            "(file changed or corrupt after export); refusing to push it"
        )
    return LocalModel(
        directory=directory,
        model_path=model_path,
        manifest_path=manifest_path,
        manifest=manifest,
        sha256=sha,
        manifest_sha256=sha256_file(manifest_path),
        size=model_path.stat().st_size,
    )


def resolve_name(model: LocalModel | None, name: str | None) -> str:
    return validate_model_name(name or (model.default_name if model else ""))
