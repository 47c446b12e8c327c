"""The ``deployments`` table (store migration 2): every push and rollback outcome per device, so that
``fleet status`` can tell what *should* be on a device from what is."""

from __future__ import annotations

import time
from typing import Any

from edgenas.fleet.common import DeviceResult
from edgenas.store import Store


def record_deployment(
    store: Store, result: DeviceResult, action: str, manifest_json: str | None
) -> None:
    """One row per device and attempt, failures included (``reason`` says why)."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO deployments (device, model_name, version, sha256, previous_sha256, action, "
            "status, reason, manifest_json, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                result.device,
                result.model or "",
                result.version,
                result.sha256,
                result.previous_sha256,
                action,
                result.status,
                result.reason,
                manifest_json,
                time.time(),
            ),
        )


def expected_state(store: Store, device: str, name: str) -> dict[str, Any] | None:
    """What the last successful push or rollback left on ``device`` for model ``name``: ``{version,
    sha256, action, created_at}``, or None when the workspace never deployed it there."""
    rows = store.query(
        "SELECT version, sha256, action, status, created_at FROM deployments "
        "WHERE device = ? AND model_name = ? AND status IN ('ok', 'unchanged') "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        (device, name),
    )
    return dict(rows[0]) if rows else None


def history(store: Store, device: str | None = None, name: str | None = None,
            limit: int = 50) -> list[dict[str, Any]]:
    """Recent deployments, newest first."""
    sql = "SELECT * FROM deployments WHERE 1 = 1"
    params: list[Any] = []
    if device:
        sql += " AND device = ?"
        params.append(device)
    if name:
        sql += " AND model_name = ?"
        params.append(name)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    params.append(limit)
    return [dict(r) for r in store.query(sql, tuple(params))]
