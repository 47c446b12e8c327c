"""The ``deployments`` table: every push and rollback outcome per device and model, failures included,
so that ``fleet status`` can tell what *should* be on a device from what is, ``fleet bench`` can time a
deployed model with the manifest this workspace pushed (never the device's copy), and the report can
show the fleet.  Every query on the table lives here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from edgenas.core.errors import EdgeNASError
from edgenas.records.store import Store

ACTIONS = ("push", "rollback")
STATUSES = ("ok", "unchanged", "failed", "rolled-back")
_LIVE = ("ok", "unchanged")  # outcomes after which the device holds the recorded version


class DeploymentError(EdgeNASError):
    """A deployment outcome cannot be recorded (unknown action or status)."""


@dataclass(frozen=True)
class Deployment:
    """One row."""

    device: str
    model_name: str
    action: str
    status: str
    version: str | None = None
    sha256: str | None = None
    previous_sha256: str | None = None
    reason: str | None = None
    manifest_json: str | None = None
    created_at: float = field(default_factory=time.time)
    id: int | None = None

    def to_dict(self, manifest: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not manifest:
            out.pop("manifest_json")
        return out


_COLUMNS = ("device", "model_name", "version", "sha256", "previous_sha256", "action", "status",
            "reason", "manifest_json", "created_at")
_SELECT = f"SELECT id, {', '.join(_COLUMNS)} FROM deployments"


class Outcome(Protocol):
    """What a fleet verb knows about one device after acting on it (a fleet ``DeviceResult``)."""

    device: str
    status: str
    model: str | None
    version: str | None
    sha256: str | None
    previous_sha256: str | None
    reason: str | None


def _from_row(r: sqlite3.Row) -> Deployment:
    return Deployment(**{k: r[k] for k in ("id", *_COLUMNS)})


# ---------------------------------------------------------------------------------------------- write


def insert(store: Store, d: Deployment) -> Deployment:
    """Store ``d`` (its ``id`` is ignored) and return it with its id."""
    if d.action not in ACTIONS or d.status not in STATUSES:
        raise DeploymentError(f"cannot record a deployment with action {d.action!r} and status "
                              f"{d.status!r} (actions: {', '.join(ACTIONS)}; statuses: "
                              f"{', '.join(STATUSES)})")
    with store.transaction() as conn:
        cur = conn.execute(
            f"INSERT INTO deployments ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            tuple(getattr(d, c) for c in _COLUMNS))
    return Deployment(**{**asdict(d), "id": cur.lastrowid})


def record_deployment(store: Store, result: Outcome, action: str,
                      manifest_json: str | None) -> Deployment:
    """One row per device and attempt, failures included (``reason`` says why)."""
    return insert(store, Deployment(result.device, result.model or "", action, result.status,
                                    result.version, result.sha256, result.previous_sha256,
                                    result.reason, manifest_json))


# ---------------------------------------------------------------------------------------------- read


def expected_state(store: Store, device: str, name: str) -> Deployment | None:
    """The last successful push or rollback of model ``name`` on ``device`` (what it should hold), or
    None when this workspace never deployed it there."""
    rows = store.query(
        f"{_SELECT} WHERE device = ? AND model_name = ? AND status IN {_LIVE!r} "
        "ORDER BY created_at DESC, id DESC LIMIT 1", (device, name))
    return _from_row(rows[0]) if rows else None


def history(store: Store, device: str | None = None, name: str | None = None,
            limit: int = 50) -> list[Deployment]:
    """Recent deployments, newest first."""
    sql, params = f"{_SELECT} WHERE 1 = 1", []
    if device:
        sql += " AND device = ?"
        params.append(device)
    if name:
        sql += " AND model_name = ?"
        params.append(name)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    params.append(max(0, int(limit)))
    return [_from_row(r) for r in store.query(sql, tuple(params))]


def latest_per_model(store: Store) -> list[Deployment]:
    """The newest attempt (whatever its status) per (device, model), by device."""
    rows = store.query(
        f"{_SELECT} AS d WHERE id = (SELECT MAX(id) FROM deployments e "
        "WHERE e.device = d.device AND e.model_name = d.model_name) ORDER BY device, model_name")
    return [_from_row(r) for r in rows]


def deployed_names(store: Store, device: str) -> list[str]:
    """The models this workspace ever deployed successfully on ``device``, by name."""
    rows = store.query(f"SELECT DISTINCT model_name FROM deployments WHERE device = ? AND status IN "
                       f"{_LIVE!r} ORDER BY model_name", (device,))
    return [r["model_name"] for r in rows]


def deployed_manifest(store: Store, sha256: str) -> dict[str, Any]:
    """The manifest this workspace pushed with the model ``sha256`` ({} if it never pushed it)."""
    rows = store.query(
        "SELECT manifest_json FROM deployments WHERE sha256 = ? AND manifest_json IS NOT NULL "
        "ORDER BY id DESC LIMIT 1", (sha256,))
    try:
        data = json.loads(rows[0]["manifest_json"]) if rows else {}
    except (TypeError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


__all__ = ["Deployment", "DeploymentError", "deployed_manifest", "deployed_names", "expected_state",
           "history", "insert", "latest_per_model", "record_deployment"]
