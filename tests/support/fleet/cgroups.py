"""A cgroup per device: it lists every process of the device (to kill or freeze them all) and, for a
"slow" device, caps its CPU so that work there takes measurably longer.

Both layouts are supported: v1 (separate ``cpu`` and ``cpuset`` hierarchies, as on this host:
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) and v2 (one unified tree: ``cpu.max``).  A 10 ms period
keeps the throttling fine-grained, so a 25 % quota reads as ≈4× slower even for short commands.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.fleet.system import CGROUP_ROOT, FleetError, cgroup_pids, record, remove_cgroup

PERIOD_US = 10_000


def cgroup_version(root: Path = CGROUP_ROOT) -> int:
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "cpu" / "cpu.cfs_quota_us").exists() or (root / "cpu" / "tasks").exists():
        return 1
    raise FleetError(f"no usable cgroup hierarchy under {root} (need cgroup v1 cpu or cgroup v2)")


class CGroup:
    """One device's cgroup(s).  ``cpu_quota`` is the fraction of one CPU (None: unlimited), enforced
    per ``period_us``.  ``memory_bytes`` caps the device's memory (swap included), so a model too big
    for it is killed by the kernel's OOM killer as on a small board."""

    def __init__(
        self,
        name: str,
        run_dir: Path,
        cpu_quota: float | None = None,
        cpus: str | None = None,
        root: Path = CGROUP_ROOT,
        period_us: int = PERIOD_US,
        memory_bytes: int | None = None,
    ) -> None:
        self.version = cgroup_version(root)
        self.dirs: list[Path] = []
        try:
            if self.version == 1:
                cpu = root / "cpu" / name
                self._mkdir(cpu, run_dir)
                if cpu_quota is not None:
                    (cpu / "cpu.cfs_period_us").write_text(str(period_us))
                    (cpu / "cpu.cfs_quota_us").write_text(str(int(period_us * cpu_quota)))
                if cpus is not None and (root / "cpuset").is_dir():
                    cpuset = root / "cpuset" / name
                    self._mkdir(cpuset, run_dir)
                    # A v1 cpuset accepts no task until both of these are set.
                    (cpuset / "cpuset.cpus").write_text(cpus)
                    (cpuset / "cpuset.mems").write_text(
                        (root / "cpuset" / "cpuset.mems").read_text().strip()
                    )
                if memory_bytes is not None:
                    mem = root / "memory" / name
                    self._mkdir(mem, run_dir)
                    (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
                    if (mem / "memory.memsw.limit_in_bytes").exists():  # no swapping around the cap
                        (mem / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            else:
                controllers = (root / "cgroup.subtree_control").read_text().split()
                wanted = [c for c in ("cpu", "cpuset", *(("memory",) if memory_bytes else ()))
                          if c not in controllers]
                if wanted:
                    (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
                path = root / name
                self._mkdir(path, run_dir)
                if cpu_quota is not None:
                    (path / "cpu.max").write_text(f"{int(period_us * cpu_quota)} {period_us}")
                if cpus is not None:
                    (path / "cpuset.cpus").write_text(cpus)
                if memory_bytes is not None:
                    (path / "memory.max").write_text(str(memory_bytes))
                    if (path / "memory.swap.max").exists():
                        (path / "memory.swap.max").write_text("0")
        except OSError as exc:
            self.delete()
            raise FleetError(f"cannot set up cgroup {name}: {exc}") from exc

    def _mkdir(self, path: Path, run_dir: Path) -> None:
        path.mkdir()
        record(run_dir, "cgroup", str(path))
        self.dirs.append(path)

    @property
    def procs_files(self) -> list[Path]:
        """Files a process writes its pid into to join (every hierarchy)."""
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            out.update(cgroup_pids(d))
        return sorted(out)

    def delete(self) -> None:
        for d in reversed(self.dirs):
            remove_cgroup(d)
        self.dirs = []
