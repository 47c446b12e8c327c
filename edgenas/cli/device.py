"""``edgenas device …``: register devices, probe them, set them up, check the fleet."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from edgenas.cli.common import Workspace, cpu_set, echo, echo_json, table
from edgenas.core.errors import DeviceError
from edgenas.device import enroll, layout, registry
from edgenas.device import inventory as inv
from edgenas.device import probe as devlib
from edgenas.device.connect import known_hosts_path
from edgenas.device.inventory import python_command, validate_workdir
from edgenas.device.session import DeviceSession
from edgenas.device.transports.ssh import check_private_key, forget_known_host
from edgenas.records.classes import ClassError, class_of, how, validate_class
from edgenas.records.store import Store, open_store


def _class_option(_ctx: Any, _param: Any, value: str | None) -> str | None:
    """``--class``: checked before anything is contacted."""
    if value is None:
        return None
    try:
        return validate_class(value)
    except ClassError as exc:
        raise click.BadParameter(str(exc)) from None


def _checked_paths(python: str | None, workdir: str | None, kind: str) -> tuple[str | None, str | None]:
    """--python and --workdir by the same rules as an inventory's (edgenas.device.inventory): one
    interpreter
    program (``env python3`` becomes ``python3``; a command line is refused), and a work folder that
    is not /, a home or shared root, or inside a system folder — edgenas deletes files in it."""

    try:
        python = python_command(python) if python is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--python") from None
    try:
        workdir = validate_workdir(workdir, kind, host_home=Path.home()) if workdir is not None \
            else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--workdir") from None
    return python, workdir


def _store(ws: Workspace) -> Store:
    return open_store(ws.ensure())


@click.group()
def device() -> None:
    """Register and inspect the devices that models are measured on."""


@device.command("add")
@click.argument("name")
@click.option(
    "--ssh",
    "ssh_target",
    metavar="USER@HOST[:PORT]|ALIAS",
    help="An SSH device (a ~/.ssh/config Host alias works: HostName, User, Port, IdentityFile).",
)
@click.option(
    "--adb", "adb_serial", metavar="SERIAL|HOST:PORT", help="An Android device via the adb server."
)
@click.option("--local", "is_local", is_flag=True, help="This machine.")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SSH private key (default: ssh config, ssh-agent, ~/.ssh keys).",
)
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Connect now and trust the device's SSH host key if it is unknown (trust on first use).",
)
@click.option(
    "--host-key",
    "host_key",
    metavar="SHA256:FINGERPRINT",
    help="Pin the device's SSH host key (as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` "
    "prints it on the device): any other key is refused. With --replace it also replaces a stale "
    "key recorded for that host.",
)
@click.option(
    "--ssh-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="ssh config file for aliases [default: ~/.ssh/config].",
)
@click.option(
    "--jump",
    "jump",
    multiple=True,
    metavar="[USER@]HOST[:PORT]",
    help="Reach the SSH device through this jump host (ssh -J, ProxyJump): repeatable or a comma "
    "list, first hop first; hop names are resolved in the ssh config. Replaces a ProxyJump the config "
    "gives the device; `--jump none` connects directly. Each hop's host key is checked like the "
    "device's.",
)
@click.option(
    "--jump-host-key",
    "jump_host_keys",
    multiple=True,
    metavar="SHA256:FINGERPRINT",
    help="Pin a jump host's SSH host key: one per hop, in order (else known_hosts decides, or "
    "--accept-new-host-key trusts it now; a hop's key verified while the device is added is pinned "
    "in its record either way).",
)
@click.option(
    "--group", "groups", multiple=True, metavar="GROUP", help="Put the device in GROUP (repeatable)."
)
@click.option("--workdir", help="Directory on the device for the runner and models.")
@click.option("--python", "python", help="Python interpreter on the device [default: python3].")
@click.option("--timeout", type=float, default=None, help="Connect timeout in seconds [default: 10].")
@click.option(
    "--benchmark-binary",
    "benchmark_binary",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="LiteRT's benchmark_model built for the device, for devices without Python (Android "
    "phones): `edgenas bench` pushes it and parses its output instead of running the Python runner.",
)
@click.option(
    "--no-xnnpack",
    "no_xnnpack",
    is_flag=True,
    help="A device profile without XNNPACK (a runtime built without it): every benchmark, measurement "
    "campaign, latency predictor and search verification of this device uses the builtin kernels only.",
)
@click.option("--cache-mib", type=click.IntRange(0, 1 << 20), default=None, metavar="MIB",
              help="Bound of the device's cache of benchmarked models and sent inputs (least recently "
              "used first) [default: 512].")
@click.option("--class", "device_class", default=None, metavar="CLASS", callback=_class_option,
              help="The device's class, instead of the one derived from its probe (CPU, cores, arch, "
              "runtime and version): devices of one class share measurements and latency predictors.")
@click.option("--latency-budget-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="MS", help="The latency this device's model must keep: `fleet specialize` gives "
              "each class the strictest budget of its devices.")
@click.option("--memory-budget-mb", type=click.FloatRange(min=0, min_open=True, max=1 << 20,
                                                          max_open=True),
              default=None, metavar="MIB", help="The peak memory this device's model may use: `fleet "
              "specialize` gives each class the strictest budget of its devices and `fleet bench` "
              "flags a device measuring over it.")
@click.option("--cpus", default=None, metavar="SET", callback=cpu_set,
              help="Pin every benchmark of the device to these CPUs (4-7: big.LITTLE's big cores, as "
              "`device probe` lists them); part of the device's class.")
@click.option("--replace", is_flag=True, help="Overwrite an existing device of that name.")
@click.pass_obj
def add(
    ws: Workspace,
    name: str,
    ssh_target: str | None,
    adb_serial: str | None,
    is_local: bool,
    key_path: Path | None,
    accept_new_host_key: bool,
    host_key: str | None,
    ssh_config: Path | None,
    jump: tuple[str, ...],
    jump_host_keys: tuple[str, ...],
    groups: tuple[str, ...],
    workdir: str | None,
    python: str | None,
    timeout: float | None,
    benchmark_binary: Path | None,
    no_xnnpack: bool,
    cache_mib: int | None,
    device_class: str | None,
    latency_budget_ms: float | None,
    memory_budget_mb: float | None,
    cpus: str | None,
    replace: bool,
) -> None:
    """Register device NAME (exactly one of --ssh, --adb, --local).

    SSH: with --host-key or --accept-new-host-key the device is contacted now and its key checked;
    with --key only that key is offered (it must not be readable by group or others).  ADB: the
    device is contacted now and its serial (ro.serialno) recorded; a different device answering at
    that address later is refused."""
    if sum(x is not None and x is not False for x in (ssh_target, adb_serial, is_local or None)) != 1:
        raise click.UsageError("give exactly one of --ssh, --adb, --local")
    if (accept_new_host_key or host_key or jump or jump_host_keys) and not ssh_target:
        raise click.UsageError(
            "--accept-new-host-key, --host-key, --jump and --jump-host-key only apply to --ssh devices"
        )
    if accept_new_host_key and host_key:
        raise click.UsageError("give --host-key (a pinned key) or --accept-new-host-key, not both")
    python, workdir = _checked_paths(python, workdir, "ssh" if ssh_target else
                                     "adb" if adb_serial else "local")
    home = ws.ensure()
    common: dict[str, Any] = dict(
        home=home,
        workdir=workdir,
        python=python,
        timeout_s=timeout,
        groups=groups,
        device_class=device_class,
        latency_budget_ms=latency_budget_ms,
        memory_budget_mb=memory_budget_mb,
        benchmark_binary=benchmark_binary,
        xnnpack=not no_xnnpack,
        cache_mib=cache_mib,
        cpus=cpus,
    )
    if ssh_target:
        target = registry.parse_ssh_target(ssh_target, ssh_config)
        hops = registry.resolve_jump(jump, ssh_config) if jump else list(target.jump)
        if jump_host_keys:
            if not hops:
                raise click.UsageError("--jump-host-key needs jump hosts (--jump, or ProxyJump in the "
                                       "ssh config)")
            hops = registry.pin_hops(hops, jump_host_keys)
        dev = registry.make_device(
            name,
            "ssh",
            host=target.host,
            user=target.user,
            port=target.port,
            key_path=str(key_path) if key_path else target.key_path,
            ssh_alias=target.alias,
            host_key=host_key,
            jump=hops,
            **common,
        )
        if dev.key_path:

            check_private_key(dev.key_path)
    elif adb_serial:
        dev = registry.make_device(name, "adb", serial=adb_serial, **common)
    else:
        dev = registry.make_device(name, "local", **common)
    with _store(ws) as store:
        if not replace and any(d.name == name for d in registry.list_devices(store)):
            raise DeviceError(
                f"device {name} already exists (use --replace, or `edgenas device remove`)"
            )
        note = ""
        if dev.kind == "ssh" and accept_new_host_key:
            dev.host_key_fingerprint, note = enroll.trust_host_key(dev, home)
        elif dev.kind == "ssh" and host_key:
            note = enroll.check_pinned_host_key(dev, home, replace)
        elif dev.kind == "adb":
            dev.adb_serialno, note = enroll.read_adb_serialno(dev, home)
        registry.add_device(store, dev, replace_existing=replace)
    echo(f"added {dev.kind} device {dev.name} ({dev.address}){note}")
    if dev.benchmark_binary:
        echo(f"  benchmarks run {dev.benchmark_binary} (pinned by sha256: a changed file is refused "
             "until registered again)")
    if not dev.xnnpack:
        echo("  without XNNPACK: benchmarks use the runtime's builtin kernels only")
    if dev.jump:
        echo(f"  through jump host{'s' if len(dev.jump) > 1 else ''} {dev.jump_spec} (each one's host "
             "key checked like the device's)")
    if dev.kind == "ssh" and not (accept_new_host_key or host_key):
        echo(
            "  host key not checked yet: an unknown key will be refused on first use "
            "(add with --accept-new-host-key to trust it now)"
        )


@device.command("list")
@click.option("--group", default=None, help="Only devices in this group.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(ws: Workspace, group: str | None, as_json: bool) -> None:
    """List registered devices."""
    with _store(ws) as store:
        devs = registry.list_devices(store, group=group)
    if as_json:
        echo_json([d.to_dict() for d in devs])
        return
    if not devs:
        echo("no devices (add one with `edgenas device add`)")
        return
    rows = []
    for d in devs:
        p = d.probe or {}
        rows.append(
            [
                d.name,
                d.kind,
                d.address,
                ",".join(d.groups),
                class_of(d),
                p.get("arch"),
                p.get("python_version"),
                p.get("runtime"),
                _age(d.probed_at),
            ]
        )
    echo(table(["name", "kind", "address", "groups", "class", "arch", "python", "runtime",
                      "probed"], rows))


def _age(ts: float | None) -> str:
    if not ts:
        return "never"
    s = time.time() - ts
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


@device.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(ws: Workspace, name: str, as_json: bool) -> None:
    """Everything known about one device, including its last probe."""
    with _store(ws) as store:
        d = registry.get_device(store, name)
    if as_json:
        echo_json(d.to_dict())
        return
    fields = [
        ("name", d.name),
        ("kind", d.kind),
        ("address", d.address),
        ("ssh alias", d.ssh_alias),
        ("jump hosts", d.jump_spec),
        ("jump host keys", ", ".join(h.get("host_key") or "(known_hosts decides)" for h in d.jump)
         if d.jump else None),
        ("key", d.key_path),
        ("host key", d.host_key_fingerprint),
        ("workdir", d.workdir),
        ("python", d.python),
        ("benchmark binary", d.benchmark_binary),
        ("timeout", f"{d.timeout_s:g} s"),
        ("groups", ", ".join(d.groups)),
        ("cpus", d.cpus),
        ("class", f"{class_of(d)} ({how(d)})"),
        ("latency budget", d.latency_budget_ms and f"{d.latency_budget_ms:g} ms"),
        ("memory budget", d.memory_budget_mb and f"{d.memory_budget_mb:g} MiB"),
        ("probed", _age(d.probed_at)),
    ]
    p = d.probe or {}
    if p:
        rt = p.get("runtime")
        fields += [
            ("arch", p.get("arch")),
            ("cpu", p.get("cpu_model")),
            ("cores", p.get("cores")),
            ("core clusters", p.get("cpu_clusters")),
            ("memory", f"{p.get('mem_total_mib')} MiB"),
            ("os", p.get("os")),
            ("python version", p.get("python_version")),
            ("numpy", p.get("numpy")),
            (
                "runtime",
                f"{rt} {p['runtimes'][rt].get('version')}" if rt else f"none — {p.get('install_hint')}",
            ),
            ("governor", p.get("governor")),
            ("freq", p.get("freq_mhz") and f"{p['freq_mhz']} MHz"),
            ("temperature", p.get("temperature_c") and f"{p['temperature_c']} °C"),
            ("round trip", p.get("rtt_ms") and f"{p['rtt_ms']} ms"),
        ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        if value not in (None, ""):
            echo(f"{key.ljust(width)}  {value}")


@device.command("set-class")
@click.argument("args", nargs=-1, required=True, metavar="NAME... (CLASS | --derived)")
@click.option("--derived", is_flag=True, help="Forget the name given; derive the class from the probe.")
@click.pass_obj
def set_class(ws: Workspace, args: tuple[str, ...], derived: bool) -> None:
    """Name the class of devices NAME... (or groups): they share measurements and latency predictors.

    Measurements already taken stay with the class they were taken in."""
    names, device_class = (args, None) if derived else (args[:-1], _class_option(None, None, args[-1]))
    if not names:
        raise click.UsageError("give NAME... CLASS, or NAME... --derived")
    with _store(ws) as store:
        devs = registry.select_devices(store, names)
        registry.set_device_class(store, [d.name for d in devs], device_class)
        for d in registry.select_devices(store, [d.name for d in devs]):
            echo(f"{d.name}: class {class_of(d)} ({how(d)})")


@device.command("remove")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def remove(ws: Workspace, names: tuple[str, ...]) -> None:
    """Forget devices (and, for SSH, their host key when no other device uses that host)."""

    home = ws.ensure()
    with _store(ws) as store:
        for name in names:
            d = registry.get_device(store, name)
            registry.remove_device(store, name)
            others = [
                o
                for o in registry.list_devices(store)
                if o.kind == "ssh" and (o.host, o.port) == (d.host, d.port)
            ]
            if d.kind == "ssh" and d.host and not others:
                forget_known_host(known_hosts_path(home), d.host, d.port or 22)
            echo(f"removed {name}")


@device.group("group")
def group() -> None:
    """Put devices into named groups (targets for check, measure and push)."""


@group.command("add")
@click.argument("group_name")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def group_add(ws: Workspace, group_name: str, names: tuple[str, ...]) -> None:
    """Add devices NAMES to GROUP_NAME."""
    with _store(ws) as store:
        registry.set_groups(store, names, group_name, member=True)
    echo(f"group {group_name}: added {', '.join(names)}")


@group.command("remove")
@click.argument("group_name")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def group_remove(ws: Workspace, group_name: str, names: tuple[str, ...]) -> None:
    """Take devices NAMES out of GROUP_NAME."""
    with _store(ws) as store:
        registry.set_groups(store, names, group_name, member=False)
    echo(f"group {group_name}: removed {', '.join(names)}")


@device.command("import")
@click.argument("inventory", type=click.Path(exists=True, path_type=Path))
@click.option("--ssh-config", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--accept-new-host-key", is_flag=True, help="Connect to each SSH host and trust unknown keys."
)
@click.option(
    "--via-ansible",
    is_flag=True,
    help="Read the inventory through `ansible-inventory --list`, which runs it as code: needed for "
    "scripts (executable files), plugin configurations, vault and folders, which edgenas does not "
    "read itself.  Use only for an inventory you trust as a program.",
)
@click.option(
    "--binary-dir",
    "binary_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder edgenas_benchmark_binary may point into besides the inventory's own (repeatable).",
)
@click.option(
    "--allow-local-python",
    "local_pythons",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An interpreter a local device of the inventory may name (ansible_python_interpreter, "
    "edgenas_python) besides edgenas' own; edgenas runs it on this host (repeatable).",
)
@click.pass_obj
def import_(
    ws: Workspace,
    inventory: Path,
    ssh_config: Path | None,
    accept_new_host_key: bool,
    via_ansible: bool,
    binary_dirs: tuple[Path, ...],
    local_pythons: tuple[Path, ...],
) -> None:
    """Import devices from an Ansible inventory: INI or YAML, with group_vars/ and host_vars/ beside it.

    Every value is checked before anything is recorded: a bad inventory imports nothing."""

    home = ws.ensure()
    devs = inv.load_inventory(
        inventory, home=home, ssh_config=ssh_config, via_ansible=via_ansible, binary_dirs=binary_dirs,
        local_pythons=local_pythons,
    )
    if accept_new_host_key:
        for d in devs:
            if d.kind == "ssh":
                d.host_key_fingerprint, _ = enroll.trust_host_key(d, home)
    with _store(ws) as store:
        added, updated = inv.import_inventory(store, devs)
    echo(
        f"imported {len(devs)} devices from {inventory}: {len(added)} added, {len(updated)} updated"
    )
    for d in devs:
        echo(f"  {d.name:<16} {d.kind:<5} {d.address:<28} {','.join(d.groups)}")


@device.command("probe")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--all-runtimes",
    is_flag=True,
    help="Also import TensorFlow when a lighter runtime works (takes seconds).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def probe(ws: Workspace, names: tuple[str, ...], all_runtimes: bool, as_json: bool) -> None:
    """Probe devices (NAMES may be groups): CPU, memory, OS, Python, TFLite runtimes, clocks.

    The cores are listed with their maximum frequency and capacity where the kernel exposes them
    (cpufreq/cpuinfo_max_freq, cpu_capacity): on big.LITTLE the big ones are the set to give --cpus."""
    home = ws.ensure()
    with _store(ws) as store:
        devs = registry.select_devices(store, names)
        results: dict[str, Any] = {}
        for d in devs:
            with DeviceSession(home, d) as session:
                facts = devlib.probe(session, all_runtimes=all_runtimes)
            registry.save_probe(store, d.name, facts)
            results[d.name] = facts
    if as_json:
        echo_json(results)
        return
    for name, p in results.items():
        rt = p.get("runtime")
        runtime = f"{rt} {p['runtimes'][rt].get('version')}" if rt else f"none: {p.get('install_hint')}"
        echo(
            f"{name}: {p.get('arch')}, {p.get('cores')} cores, {p.get('mem_total_mib')} MiB, "
            f"{p.get('os')}, Python {p.get('python_version') or '-'}, runtime {runtime}"
        )
        if p.get("cpu_clusters"):
            echo(f"  cores (max frequency, capacity): {p['cpu_clusters']}")


@device.command("setup")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def setup(ws: Workspace, names: tuple[str, ...]) -> None:
    """Copy the runner to the devices' workdir and check that it runs (says what to install if not)."""
    home = ws.ensure()
    failed = []
    with _store(ws) as store:
        for d in registry.select_devices(store, names):
            try:
                with DeviceSession(home, d) as session:
                    info = devlib.setup(session)
            except DeviceError as exc:
                if len(names) == 1:
                    raise
                echo(f"{d.name}: FAILED: {exc}", err=True)
                failed.append(d.name)
                continue
            rt = info["runtime"]
            echo(
                f"{d.name}: runner ready in {d.workdir} (Python {info['python']['version']}, "
                f"{rt['name']} {rt['version']})"
            )
    if failed:
        raise DeviceError(f"setup failed on {', '.join(failed)}")


@device.command("clean")
@click.argument("names", nargs=-1, required=True)
@click.option("--keep-mib", type=int, default=0, show_default=True,
              help="Trim each cache to this size (least recently used first) instead of emptying it.")
@click.pass_obj
def clean(ws: Workspace, names: tuple[str, ...], keep_mib: int) -> None:
    """Empty the devices' caches (models benchmarked, their manifests, inputs sent by predict).

    Deployed models (models/NAME/...) and the runner are kept.  Takes the device lock, so it never
    deletes a model a running benchmark uses."""

    if keep_mib < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--keep-mib")
    home = ws.ensure()
    with _store(ws) as store:
        devs = registry.select_devices(store, names)
    for d in devs:
        with DeviceSession(home, d) as session, session.locked(ttl_s=300):
            said = []
            for folder in (layout.MODEL_CACHE, layout.MANIFEST_CACHE, layout.INPUT_CACHE):
                res = session.sh("prune", [session.path(folder), str(keep_mib * 1024)])
                said.append(f"{folder.split('/')[-1]} {res.stdout.strip()[:80]}")
        echo(f"{d.name}: " + "; ".join(said))


@device.command("check")
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.option("--workers", type=int, default=8, show_default=True)
@click.pass_obj
def check(ws: Workspace, targets: tuple[str, ...], as_json: bool, workers: int) -> None:
    """Probe all devices (or TARGETS: names or groups) in parallel and print a status table."""
    home = ws.ensure()
    with _store(ws) as store:
        devs = registry.select_devices(store, targets)
        results = devlib.check(devs, home, workers=workers)
        for r in results:
            if r.ok and r.probe is not None:
                registry.save_probe(store, r.device.name, r.probe)
    if as_json:
        echo_json(
            [
                {
                    "name": r.device.name,
                    "ok": r.ok,
                    "seconds": round(r.seconds, 2),
                    "error": r.error,
                    "probe": r.probe,
                }
                for r in results
            ]
        )
    else:
        rows = []
        for r in results:
            p = r.probe or {}
            rows.append(
                [
                    r.device.name,
                    r.device.kind,
                    r.device.address,
                    "ok" if r.ok else "FAIL",
                    p.get("rtt_ms"),
                    p.get("arch"),
                    p.get("python_version"),
                    p.get("runtime") or (f"none: {p.get('install_hint')}" if p else None),
                    r.error or "",
                ]
            )
        echo(
            table(
                ["name", "kind", "address", "status", "rtt ms", "arch", "python", "runtime", "error"],
                rows,
            )
            if rows
            else "no devices"
        )
    bad = [r.device.name for r in results if not r.ok]
    if bad:
        raise DeviceError(f"{len(bad)} of {len(results)} devices failed: {', '.join(bad)}")
