"""The workspace database: one SQLite file (``<home>/edgenas.db``) for devices, measurements and
deployments.

Why SQLite in WAL mode: several ``edgenas`` processes (a measurement batch, a ``device add`` in another
terminal, a fleet push) share the workspace at once.  WAL lets readers run beside one writer, and
``busy_timeout`` makes a writer wait for the lock instead of failing with "database is locked".  Every
write goes through :meth:`Store.transaction`, which takes the write lock up front (``BEGIN
IMMEDIATE``) so two read-then-write sequences never deadlock on lock upgrade.

The schema is versioned with ``PRAGMA user_version``.  :data:`MIGRATIONS` is an append-only list: entry
``i`` moves the schema from version ``i`` to ``i + 1``.  Later features add their tables by appending a
migration here — never by editing an old one, since old ones have already run in users' workspaces.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgenas.core.errors import EdgeNASError
from edgenas.core.files import PRIVATE_FILE_MODE, private_dir, private_file
from edgenas.records import classes, memory

DB_NAME = "edgenas.db"
BUSY_TIMEOUT_MS = 30_000

# Append-only.  Each entry is one SQL script run inside the migration's transaction.
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the device registry.
    """
    CREATE TABLE devices (
        name        TEXT PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('ssh', 'adb', 'local')),
        host        TEXT,
        user        TEXT,
        port        INTEGER,
        key_path    TEXT,
        serial      TEXT,
        ssh_alias   TEXT,
        workdir     TEXT,
        python      TEXT,
        timeout_s   REAL NOT NULL DEFAULT 10,
        host_key_fingerprint TEXT,
        probe_json  TEXT,
        probed_at   REAL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE device_groups (
        device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
        grp    TEXT NOT NULL,
        PRIMARY KEY (device, grp)
    );
    CREATE INDEX device_groups_grp ON device_groups(grp);
    """,
    # 1 -> 2: latency measurements (with provenance), supernet accuracy evaluations, deployments.
    """
    CREATE TABLE measurements (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        device          TEXT NOT NULL,
        arch            TEXT NOT NULL,
        space           TEXT,
        precision       TEXT NOT NULL,
        threads         INTEGER NOT NULL,
        runtime         TEXT,
        runtime_version TEXT,
        model_sha256    TEXT NOT NULL,
        source_sha256   TEXT,
        campaign        TEXT,
        median_ms       REAL NOT NULL,
        p90_ms          REAL,
        mean_ms         REAL,
        std_ms          REAL,
        min_ms          REAL,
        cv              REAL,
        init_ms         REAL,
        first_ms        REAL,
        runs            INTEGER,
        peak_rss_kib    INTEGER,
        noisy           INTEGER NOT NULL DEFAULT 0,
        governor        TEXT,
        freq_mhz_before REAL,
        freq_mhz_after  REAL,
        temp_c_before   REAL,
        temp_c_after    REAL,
        result_json     TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE INDEX measurements_key ON measurements(device, precision, threads, arch);
    CREATE INDEX measurements_campaign ON measurements(campaign);
    CREATE TABLE accuracy_evals (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        source_sha256  TEXT NOT NULL,
        arch           TEXT NOT NULL,
        space          TEXT,
        data           TEXT NOT NULL,
        top1           REAL NOT NULL,
        images         INTEGER NOT NULL,
        created_at     REAL NOT NULL,
        UNIQUE (source_sha256, arch, data)
    );
    CREATE TABLE deployments (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        device         TEXT NOT NULL,
        model_name     TEXT NOT NULL,
        version        TEXT,
        sha256         TEXT,
        previous_sha256 TEXT,
        action         TEXT NOT NULL CHECK (action IN ('push', 'rollback')),
        status         TEXT NOT NULL CHECK (status IN ('ok', 'unchanged', 'failed')),
        reason         TEXT,
        manifest_json  TEXT,
        created_at     REAL NOT NULL
    );
    CREATE INDEX deployments_device ON deployments(device, model_name, created_at);
    """,
    # 2 -> 3: a device may be measured with LiteRT's own benchmark_model binary instead of the Python
    # runner (phones without Python).  The host path of that binary; NULL: use the runner.
    """
    ALTER TABLE devices ADD COLUMN benchmark_binary TEXT;
    """,
    # 3 -> 4: an ADB device's own ro.serialno, recorded at `device add`: ADB over TCP never
    # authenticates the device, so another one answering at that address is refused by this.
    """
    ALTER TABLE devices ADD COLUMN adb_serialno TEXT;
    """,
    # 4 -> 5: a push whose health check failed is rolled back on that device ('rolled-back').  SQLite
    # cannot change a CHECK constraint in place, so the table is rebuilt with its rows and index.
    """
    CREATE TABLE deployments_v5 (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        device         TEXT NOT NULL,
        model_name     TEXT NOT NULL,
        version        TEXT,
        sha256         TEXT,
        previous_sha256 TEXT,
        action         TEXT NOT NULL CHECK (action IN ('push', 'rollback')),
        status         TEXT NOT NULL CHECK (status IN ('ok', 'unchanged', 'failed', 'rolled-back')),
        reason         TEXT,
        manifest_json  TEXT,
        created_at     REAL NOT NULL
    );
    INSERT INTO deployments_v5 SELECT * FROM deployments;
    DROP TABLE deployments;
    ALTER TABLE deployments_v5 RENAME TO deployments;
    CREATE INDEX deployments_device ON deployments(device, model_name, created_at);
    """,
    # 5 -> 6: a device profile without XNNPACK (`device add --no-xnnpack`): the runtime build of some
    # devices lacks it, and their costs differ (int8 most of all), so bench, measure, predictors and
    # search measure such a device with the builtin kernels only.  1: XNNPACK (the default).
    """
    ALTER TABLE devices ADD COLUMN xnnpack INTEGER NOT NULL DEFAULT 1;
    """,
    # 6 -> 7: the bench protocol of each measurement in columns of its own, back-filled from the row's
    # result_json (``edgenas.settings``; rows from before the XNNPACK switch were measured with it), so
    # that a resumed campaign counts a row as done only when runtime, version, supernet and protocol
    # match, with an exact indexed query (edgenas.records.measurements.done_counts).
    """
    ALTER TABLE measurements ADD COLUMN protocol_runs INTEGER;
    ALTER TABLE measurements ADD COLUMN protocol_min_secs REAL;
    ALTER TABLE measurements ADD COLUMN protocol_warmup_runs INTEGER;
    ALTER TABLE measurements ADD COLUMN protocol_warmup_secs REAL;
    ALTER TABLE measurements ADD COLUMN xnnpack INTEGER;
    UPDATE measurements SET
        protocol_runs = json_extract(result_json, '$.edgenas.settings.runs'),
        protocol_min_secs = json_extract(result_json, '$.edgenas.settings.min_secs'),
        protocol_warmup_runs = json_extract(result_json, '$.edgenas.settings.warmup_runs'),
        protocol_warmup_secs = json_extract(result_json, '$.edgenas.settings.warmup_secs'),
        xnnpack = COALESCE(json_extract(result_json, '$.edgenas.settings.xnnpack'), 1)
    WHERE CASE WHEN json_valid(result_json)
               THEN json_type(result_json, '$.edgenas.settings') = 'object' ELSE 0 END;
    CREATE INDEX measurements_resume ON measurements(device, space, threads, source_sha256);
    """,
    # 7 -> 8: the bound of a device's cache (cache/models, cache/manifests, cache/inputs) in MiB;
    # NULL: the default (edgenas.device.layout.DEFAULT_CACHE_MIB).
    """
    ALTER TABLE devices ADD COLUMN cache_mib INTEGER;
    """,
    # 8 -> 9: device classes (edgenas.records.classes).  ``devices.device_class``: the class the user
    # named
    # (NULL: derived from the probe); ``devices.latency_budget_ms``: the device's latency budget
    # (``device add --latency-budget-ms``, inventory ``edgenas_latency_ms``) for ``fleet specialize``.
    # ``measurements.device_class``: the class of the device when the
    # row was measured; rows from before are stamped by the Python step of this migration
    # (edgenas.records.classes.backfill: the device's class derived from its stored probe, else its
    # name).
    # A row inserted without a class is a class of its own device (the trigger).
    """
    ALTER TABLE devices ADD COLUMN device_class TEXT;
    ALTER TABLE devices ADD COLUMN latency_budget_ms REAL;
    ALTER TABLE measurements ADD COLUMN device_class TEXT;
    UPDATE measurements SET device_class = device;
    CREATE INDEX measurements_class ON measurements(device_class, space, threads, precision);
    CREATE TRIGGER measurements_own_class AFTER INSERT ON measurements
    WHEN NEW.device_class IS NULL BEGIN
        UPDATE measurements SET device_class = NEW.device WHERE id = NEW.id;
    END;
    """,
    # 9 -> 10: a device's benchmark binary is pinned when it is registered: the real file its path led
    # to and that file's sha256 (edgenas.device.registry.verify_benchmark_binary refuses any change at
    # use).
    # Rows from before stay NULL: such a binary is refused until the device is registered again.
    """
    ALTER TABLE devices ADD COLUMN benchmark_binary_real TEXT;
    ALTER TABLE devices ADD COLUMN benchmark_binary_sha256 TEXT;
    """,
    # 10 -> 11: an SSH device reached through jump hosts (ProxyJump): a JSON list of hops, first one
    # first, each {host, port, user?, key_path?, host_key?}; NULL: reached directly.
    """
    ALTER TABLE devices ADD COLUMN jump_json TEXT;
    """,
    # 11 -> 12: core selection (big.LITTLE).  ``devices.cpus``: the CPU set a device's benchmarks are
    # pinned to (NULL: not pinned); ``measurements.cpus``: the set a row was measured on (provenance;
    # NULL: unpinned).  A pinned device is a class of its own (edgenas.records.classes.pinned_class).
    """
    ALTER TABLE devices ADD COLUMN cpus TEXT;
    ALTER TABLE measurements ADD COLUMN cpus TEXT;
    """,
    # 12 -> 13: memory as a measured objective.  ``measurements.memory_kib``: the model's peak memory
    # (edgenas.records.memory; rows from before are filled from their raw answer by the Python step,
    # NULL where that answer has no trustworthy peak); ``devices.memory_budget_mb``: the device's
    # memory budget (``device add --memory-budget-mb``, inventory ``edgenas_memory_mb``) for
    # ``fleet specialize`` and ``fleet bench``.
    """
    ALTER TABLE measurements ADD COLUMN memory_kib INTEGER;
    ALTER TABLE devices ADD COLUMN memory_budget_mb REAL;
    """,
)


# Python steps run after a migration's SQL, in its transaction: {version reached: step}.
MIGRATION_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {9: classes.backfill,
                                                                   13: memory.backfill}


class StoreError(EdgeNASError):
    """The workspace database cannot be opened or is newer than this edgenas."""


class Store:
    """An open workspace database.  Use as a context manager or call :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the write lock from its start (``BEGIN IMMEDIATE``)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        """Run a read query and return all rows (``sqlite3.Row``: index by column name)."""
        return self.conn.execute(sql, params).fetchall()

    @property
    def version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _private_database(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it, and tighten an existing one and its
    ``-wal``/``-shm`` files: SQLite creates those with the database file's permissions, so a private
    database keeps its journal private too, whatever the umask.

    An existing database is never opened here, only chmod-ed by path: SQLite's locks are POSIX
    record locks, which belong to the process, and closing *any* descriptor of the file drops all of
    them — every other connection of this process would silently lose its locks (another process
    could then switch the journal mode or checkpoint under it: "disk I/O error", reads that miss
    committed rows).  Only a file this call creates (O_EXCL, so nobody has it open) is closed.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     PRIVATE_FILE_MODE)
    except FileExistsError:
        private_file(path)
    else:
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # os.open's mode is filtered by the umask
        finally:
            os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        private_file(path.with_name(path.name + suffix))


def open_store(home: Path, migrations: tuple[str, ...] = MIGRATIONS) -> Store:
    """Open (creating if needed) the workspace database under ``home`` and bring its schema up to date.

    Safe when several processes open a fresh workspace at the same moment: each migration runs under the
    write lock and re-reads the version first, so it runs exactly once.
    """
    path = Path(home) / DB_NAME
    try:
        private_dir(home)
        _private_database(path)
        # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open workspace database {path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        # In WAL mode NORMAL loses no commit when a process dies (a power cut may drop the last ones)
        # and a commit does not wait for an fsync.
        conn.execute("PRAGMA synchronous = NORMAL")
        store = Store(conn, path)
        _migrate(store, migrations)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"workspace database {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return store


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL.  The switch needs a moment of exclusive access, which busy_timeout does not cover
    on every SQLite version, so retry briefly when a concurrent opener holds the file."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot switch the workspace database to WAL mode (got {mode!r})")
        return


def _migrate(store: Store, migrations: tuple[str, ...]) -> None:
    if store.version > len(migrations):
        raise StoreError(
            f"workspace database {store.path} has schema version {store.version}, newer than "
            f"this edgenas knows ({len(migrations)}); upgrade edgenas"
        )
    while store.version < len(migrations):
        with store.transaction() as conn:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current >= len(migrations):
                break
            # executescript would COMMIT our transaction; run the statements one by one instead.
            for statement in _statements(migrations[current]):
                conn.execute(statement)
            step = MIGRATION_STEPS.get(current + 1) if migrations is MIGRATIONS else None
            if step is not None:
                step(conn)
            conn.execute(f"PRAGMA user_version = {current + 1}")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (complete_statement knows about quoted semicolons)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
