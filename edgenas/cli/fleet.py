"""``edgenas fleet …``: push a model to many devices, see what runs where, roll back, benchmark and
smoke-test the rollout.  Exit status: 0 when every device succeeded, 1 when any device failed, 3 when
the ``--max-fail-percent`` limit stopped a rollout before every device was tried."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from edgenas.cli.common import CV_THRESHOLD, WARMUP_SECS, Workspace, echo, echo_json, table
from edgenas.device import registry
from edgenas.device.fanout import DEFAULT_MAX_FAIL_PERCENT, DEFAULT_PARALLEL, FanOut
from edgenas.device.registry import Device
from edgenas.export.package import ModelPackage, PackageError
from edgenas.fleet import specialize as sp
from edgenas.fleet.bench import class_summary, fleet_bench, plot
from edgenas.fleet.common import FleetError, resolve_name, validate_model_name
from edgenas.fleet.predict import predict
from edgenas.fleet.push import push
from edgenas.fleet.rollback import rollback
from edgenas.fleet.status import status_rows
from edgenas.measure.bench import BenchSettings
from edgenas.records.deployments import history
from edgenas.records.store import Store, open_store

EXIT_FAILED = 1
EXIT_LIMIT = 3


def _store(ws: Workspace) -> Store:
    return open_store(ws.ensure())


def _select(
    store: Store, groups: tuple[str, ...], names: tuple[str, ...], *, required: bool
) -> list[Device]:
    """Devices from --group/--device; all devices when neither is given and that is allowed."""
    if not groups and not names:
        if required:
            raise click.UsageError("say which devices: --group GROUP or --device NAME (repeatable)")
        return registry.list_devices(store)
    found: dict[str, Device] = {}
    for group in groups:
        members = registry.list_devices(store, group=group)
        if not members:
            raise FleetError(f"no devices in group {group!r} (see `edgenas device list`)")
        found.update((d.name, d) for d in members)
    for name in names:
        found[name] = registry.get_device(store, name)
    return [found[k] for k in sorted(found)]


def _targets(func: Any) -> Any:
    func = click.option("--device", "names", multiple=True, metavar="NAME",
                        help="A device (repeatable).")(func)
    return click.option("--group", "groups", multiple=True, metavar="GROUP",
                        help="Every device of GROUP (repeatable).")(func)


def _short(sha: str | None) -> str:
    return sha[:12] if sha else ""


def _finish(outcome: FanOut, what: str) -> None:
    counts: dict[str, int] = {}
    for r in outcome.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if outcome.limit_reached:
        echo(f"{what} stopped: the failure limit was passed ({summary})", err=True)
        sys.exit(EXIT_LIMIT)
    if outcome.failures:
        echo(f"{what} failed on {outcome.failures} of {len(outcome.results)} devices "
                   f"({summary})", err=True)
        sys.exit(EXIT_FAILED)
    echo(f"{what}: {summary}")


@click.group()
def fleet() -> None:
    """Deploy models to many devices, check and roll back, benchmark the fleet."""


@fleet.command("push")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@_targets
@click.option("--name", help="Model name on the devices [default: the manifest's name or the folder's].")
@click.option("--parallel", type=int, default=DEFAULT_PARALLEL, show_default=True,
              help="Devices pushed to at once.")
@click.option("--max-fail-percent", type=float, default=DEFAULT_MAX_FAIL_PERCENT, show_default=True,
              help="Stop starting new devices once more than this share of all devices failed.")
@click.option("--canary", type=int, default=0, show_default=True, metavar="N",
              help="Push to the first N devices first; stop there if any of them fails.")
@click.option("--no-health-check", "health_check", is_flag=True, default=True, flag_value=False,
              help="Skip loading the model and running one inference on each device after the "
                   "switch (a failed check rolls that device back).")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds allowed for each file transfer.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_obj
def push_cmd(ws: Workspace, model_dir: Path, groups: tuple[str, ...], names: tuple[str, ...],
             name: str | None, parallel: int, max_fail_percent: float, canary: int,
             health_check: bool, timeout: float, as_json: bool) -> None:
    """Push MODEL_DIR (model.tflite + manifest.json) to the devices.

    Each device gets the model under models/NAME/VERSION (VERSION = the first 12 hex digits of its
    sha256), checked on the device, then `current` is switched atomically and the old version kept as
    `previous`.  A device where anything fails keeps its previous version.  Pushing a version that is
    already current transfers nothing.  After the switch each device loads the model and runs one
    inference; a device where that fails is rolled back (status rolled-back).
    """

    try:
        model = ModelPackage.open(model_dir)
    except PackageError as exc:
        raise FleetError(f"{exc}; refusing to push it") from None
    name = resolve_name(model, name)
    with _store(ws) as store:
        devices = _select(store, groups, names, required=True)
        outcome = push(store, ws.home, devices, model, name, parallel=parallel,
                       max_fail_percent=max_fail_percent, transfer_timeout=timeout, canary=canary,
                       health_check=health_check)
    if as_json:
        echo_json({"model": name, "version": model.version, "sha256": model.sha256,
                   "ok": outcome.ok, "limit_reached": outcome.limit_reached,
                   "results": [r.to_dict() for r in outcome.results]})
    else:
        echo(f"model {name} version {model.version} ({model.size / 1e6:.2f} MB) "
                   f"to {len(devices)} devices")
        echo(table(
            ["device", "status", "version", "was", "s", "MB sent", "reason"],
            [[r.device, r.status, r.version if r.status in ("ok", "unchanged") else "",
              _short(r.previous_sha256), r.seconds, round(r.bytes_sent / 1e6, 2), r.reason or ""]
             for r in outcome.results],
        ))
    _finish(outcome, "push")


@fleet.command("status")
@_targets
@click.option("--name", help="Only this model.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.pass_obj
def status_cmd(ws: Workspace, groups: tuple[str, ...], names: tuple[str, ...], name: str | None,
               as_json: bool) -> None:
    """Show the model version and sha256 current on each device (all devices by default), read and
    checked on the device, and flag drift from what this workspace last deployed."""

    if name:
        validate_model_name(name)
    with _store(ws) as store:
        devices = _select(store, groups, names, required=False)
        if not devices:
            raise FleetError("no devices registered (see `edgenas device add`)")
        rows, outcome = status_rows(store, ws.home, devices, name)
    drifted = [r for r in rows if r.get("drift")]
    if as_json:
        echo_json(rows)
    else:
        echo(table(
            ["device", "model", "version", "sha256", "previous", "state"],
            [[r["device"], r.get("model") or "", r.get("version") or "", _short(r.get("sha256")),
              r.get("previous") or "",
              f"FAIL {r['error']}" if r.get("error") else
              f"DRIFT {r['drift']}" if r.get("drift") else r.get("note") or "ok"]
             for r in rows],
        ))
    if outcome.failures or drifted:
        echo(f"{outcome.failures} unreachable, {len(drifted)} drifted", err=True)
        sys.exit(EXIT_FAILED)


@fleet.command("rollback")
@_targets
@click.option("--name", help="The model to roll back (needed when a device holds several).")
@click.option("--parallel", type=int, default=DEFAULT_PARALLEL, show_default=True)
@click.option("--max-fail-percent", type=float, default=DEFAULT_MAX_FAIL_PERCENT, show_default=True,
              help="Stop starting new devices once more than this share of all devices failed.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rollback_cmd(ws: Workspace, groups: tuple[str, ...], names: tuple[str, ...], name: str | None,
                 parallel: int, max_fail_percent: float, as_json: bool) -> None:
    """Switch `current` back to `previous` on each device, atomically (a second rollback rolls
    forward again)."""

    if name:
        validate_model_name(name)
    with _store(ws) as store:
        devices = _select(store, groups, names, required=True)
        outcome = rollback(store, ws.home, devices, name, parallel=parallel,
                           max_fail_percent=max_fail_percent)
    if as_json:
        echo_json({"ok": outcome.ok, "results": [r.to_dict() for r in outcome.results]})
    else:
        echo(table(
            ["device", "model", "status", "now", "sha256", "reason"],
            [[r.device, r.model or "", r.status, r.version or "", _short(r.sha256), r.reason or ""]
             for r in outcome.results],
        ))
    _finish(outcome, "rollback")


@fleet.command("predict")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@_targets
@click.option("--name", help="The model to run (needed when a device holds several).")
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--parallel", type=int, default=DEFAULT_PARALLEL, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def predict_cmd(ws: Workspace, input_path: Path, groups: tuple[str, ...], names: tuple[str, ...],
                name: str | None, top_k: int, parallel: int, as_json: bool) -> None:
    """Run the current model on INPUT (.npy or image) on each device and show its top-k."""

    if name:
        validate_model_name(name)
    with _store(ws) as store:
        devices = _select(store, groups, names, required=True)
    outcome = predict(ws.home, devices, input_path, name, top_k=top_k, parallel=parallel)
    if as_json:
        echo_json({"ok": outcome.ok, "results": [
            {k: v for k, v in r.to_dict().items() if k != "extra"}
            | {"runtime": r.extra.get("runtime"), "top_k": r.extra.get("top_k"),
               "report": r.extra.get("report")}
            for r in outcome.results]})
    else:
        rows = []
        for r in outcome.results:
            if r.failed:
                rows.append([r.device, r.model or "", "", "", f"FAIL {r.reason}"])
                continue
            top = ", ".join(f"{t.get('label') if t.get('label') is not None else t.get('index')} "
                            f"{t.get('probability', 0):.3f}" for t in r.extra.get("top_k", []))
            rows.append([r.device, r.model, r.version, r.extra.get("runtime") or "", top])
        echo(table(["device", "model", "version", "runtime", f"top-{top_k}"], rows))
    _finish(outcome, "predict")


@fleet.command("bench")
@click.argument("model_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@_targets
@click.option("--name", help="Without MODEL_DIR: the deployed model to measure (needed when a device "
              "holds several).")
@click.option("--per-class", type=click.IntRange(min=1), default=None, metavar="N",
              help="Spot check: only N devices of each device class, drawn at random [default: every "
                   "selected device].")
@click.option("--seed", type=int, default=None,
              help="Seed of the --per-class draw (printed; the same seed draws the same devices).")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--runs", type=int, default=50, show_default=True, help="At least this many timed runs.")
@click.option("--min-secs", type=float, default=1.0, show_default=True,
              help="And at least this many seconds of timed runs.")
@WARMUP_SECS
@CV_THRESHOLD
@click.option("--parallel", type=int, default=DEFAULT_PARALLEL, show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Bar plot PNG [default: <home>/reports/<campaign>.png].")
@click.option("--fail-on-drift", is_flag=True,
              help="Exit 1 when a device drifts past the promise's band or its class's median, or "
                   "measures over its memory budget.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def bench_cmd(ws: Workspace, model_dir: Path | None, groups: tuple[str, ...], names: tuple[str, ...],
              name: str | None, per_class: int | None, seed: int | None, threads: int, runs: int,
              min_secs: float, warmup_secs: float, cv_threshold: float, parallel: int,
              plot_path: Path | None, fail_on_drift: bool, as_json: bool) -> None:
    """Benchmark MODEL_DIR (or each device's current model) on every device in parallel.

    Stores one measurement per device, prints device, class, runtime, precision, median, p90 and CV
    next to the latency the search promised (the manifest's `search` block for the device or its
    class, else the class's latency predictor), flags devices outside the promise's error band or
    off their class's median in this run (classes with two or more devices measured), flags devices
    whose model's peak memory is over their memory budget (`device add --memory-budget-mb`, inventory
    edgenas_memory_mb; else the search's --max-memory-mb in the manifest), prints one summary line
    per class and writes a bar plot.  With --per-class N only a sample of each class
    is measured (a spot check).
    """
    import random


    if name:
        validate_model_name(name)
    if per_class is not None and seed is None:
        seed = random.SystemRandom().randrange(2**31)  # printed, so that a draw can be repeated
    with _store(ws) as store:
        devices = _select(store, groups, names, required=True)
    settings = BenchSettings(threads=threads, runs=runs, min_secs=min_secs, warmup_secs=warmup_secs,
                             cv_threshold=cv_threshold)
    rows, outcome = fleet_bench(ws.home, devices, model_dir, name, settings=settings,
                                parallel=parallel, per_class=per_class, seed=seed)
    summary = class_summary(rows, devices)
    campaign = rows[0]["campaign"] if rows else "fleet-bench"
    png = None
    if any(not r.get("error") for r in rows):
        png = plot(rows, plot_path or ws.home / "reports" / f"{campaign}.png",
                   f"{name or (model_dir.name if model_dir else 'current model')} on the fleet")
    drifted = [r["device"] for r in rows if r.get("drift")]
    heavy = [r["device"] for r in rows if r.get("memory_over")]
    if as_json:
        echo_json({"campaign": campaign, "plot": str(png) if png else None, "per_class": per_class,
                   "seed": seed, "rows": rows, "classes": summary})
    else:
        def pct(v: float | None) -> str:
            return "" if v is None else f"{v * 100:+.1f}%"

        def flag(r: dict[str, Any]) -> str:
            if r.get("error"):
                return f"FAIL {r['error']}"
            why = [w for w, on in (("promise", r.get("promise_drift")),
                                   ("class median", r.get("class_drift"))) if on]
            flags = ([f"DRIFT ({', '.join(why)})"] if why else []) + (
                ["OVER MEMORY"] if r.get("memory_over") else [])
            return " ".join(flags) if flags else "noisy" if r.get("noisy") else ""

        def mib(r: dict[str, Any]) -> str:
            used, budget = r.get("memory_mb"), r.get("memory_budget_mb")
            text = "" if used is None else f"{used:.1f}"
            return text + ("" if budget is None else f" / {budget:g}")

        shown = sorted(rows, key=lambda r: (str(r.get("class")), r["device"]))
        echo(table(
            ["device", "class", "runtime", "precision", "median ms", "p90 ms", "CV", "predicted ms",
             "band", "delta", "vs class", "memory MiB", "flag"],
            [[r["device"], r.get("class") or "", r.get("runtime") or "", r.get("precision") or "",
              r.get("median_ms"), r.get("p90_ms"), pct(r.get("cv")).lstrip("+"),
              "" if r.get("predicted_ms") is None else
              f"{r['predicted_ms']:.4g}" + ("" if r.get("statistic", "median") == "median"
                                            else f" ({r['statistic']})"),
              f"±{r['error_band'] * 100:.0f}%" if r.get("error_band") else "", pct(r.get("delta")),
              pct(r.get("class_delta")), mib(r), flag(r)]
             for r in shown],
        ))
        for c in summary:
            med = "–" if c["median_ms"] is None else f"{c['median_ms']:.4g} ms"
            worst = [f"worst vs {what} {pct(c[key])}" for what, key in
                     (("promise", "worst_delta"), ("class median", "worst_class_delta"))
                     if c[key] is not None]
            echo(f"class {c['class']}: {c['measured']}/{c['total']} devices measured"
                       + (f" ({c['failed']} failed)" if c["failed"] else "") + f", median {med}"
                       + "".join(f", {w}" for w in worst)
                       + (f", drift on {', '.join(c['drift'])}" if c["drift"] else "")
                       + (f", over memory on {', '.join(c['memory_over'])}"
                          if c.get("memory_over") else ""))
        if per_class is not None:
            echo(f"sample: {per_class} per class, seed {seed} (--seed {seed} draws it again)")
        if png:
            echo(f"plot: {png}")
    if drifted:
        echo(f"drift past the promise's band or the class median on: {', '.join(drifted)}",
                   err=True)
    if heavy:
        echo(f"over the memory budget on: {', '.join(heavy)}", err=True)
    if outcome.failures:
        _finish(outcome, "bench")
    if (drifted or heavy) and fail_on_drift:
        sys.exit(EXIT_FAILED)


@fleet.command("history")
@click.option("--device", "device_name", help="Only this device.")
@click.option("--name", help="Only this model.")
@click.option("--limit", type=int, default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def history_cmd(ws: Workspace, device_name: str | None, name: str | None, limit: int,
                as_json: bool) -> None:
    """The recorded pushes and rollbacks, newest first."""
    import time


    with _store(ws) as store:
        rows = [d.to_dict(manifest=False) for d in history(store, device_name, name, limit)]
    if as_json:
        echo_json(rows)
        return
    echo(table(
        ["when", "device", "model", "action", "status", "version", "reason"],
        [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"])), r["device"],
          r["model_name"], r["action"], r["status"], r["version"] or "", r["reason"] or ""]
         for r in rows],
    ))


@fleet.command("specialize")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--group", required=True, help="The devices to specialise for (an inventory group).")
@click.option("--latency-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latency budget for every class [default: each class's strictest device budget, "
                   "from `device add --latency-budget-ms` or the inventory's edgenas_latency_ms].")
@click.option("--max-memory-mb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak memory budget of the model (MiB) for every class [default: each class's "
                   "strictest device budget, from `device add --memory-budget-mb` or the "
                   "inventory's edgenas_memory_mb; none: no memory constraint].")
@click.option("--precision", default="auto", show_default=True,
              type=click.Choice(["auto", "fp32", "fp16", "int8", "dynamic"]),
              help="auto: measure fp32 and int8 and let each class's search pick the faster.")
@click.option("--name", default=None, help="Model name on the devices [default: the group's name].")
@click.option("--samples", type=click.IntRange(min=4), default=20, show_default=True,
              help="At most this many subnets measured per class and precision (adaptive, stops "
                   "early once the predictor holds).")
@click.option("--canary", type=int, default=0, show_default=True, metavar="N",
              help="Push to N devices of each class first; stop that class if any fails.")
@click.option("--per-class", type=click.IntRange(min=1), default=2, show_default=True,
              help="Devices of each class benchmarked after the push.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help="Bench protocol of the campaigns and the final benchmark: timed runs ...")
@click.option("--min-secs", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="... and at least this many seconds of them.")
@WARMUP_SECS
@CV_THRESHOLD
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dry-run", is_flag=True, help="Probe and print the plan; measure and push nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def specialize_cmd(ws: Workspace, ckpt: Path, group: str, latency_ms: float | None,
                   max_memory_mb: float | None, precision: str, name: str | None, samples: int,
                   canary: int, per_class: int, threads: int, runs: int, min_secs: float,
                   warmup_secs: float, cv_threshold: float, seed: int, dry_run: bool,
                   as_json: bool) -> None:
    """Give every class of device in GROUP its own best subnet of the supernet CKPT.

    Per class (devices whose latency is the same: see `device list`): a few-shot latency campaign
    on one of its devices when it has no predictor yet, a search under its budgets (latency, and
    peak memory where one is set), an export
    calibrated on the training data, a push with health check (and canary) to all its devices, and
    a benchmark of a sample compared with the promise.  Resumable: a re-run skips every finished
    step (state in <home>/specialize/GROUP/state.json), so a finished group does nothing.
    """

    home = ws.ensure()
    with _store(ws) as store:
        plan = sp.make_plan(store, home, ckpt, group, latency_ms=latency_ms, precision=precision,
                            threads=threads, name=name, memory_mb=max_memory_mb)
        for line in sp.describe_plan(plan, samples):  # the plan is the output of a dry run
            echo(line, err=as_json or not dry_run)
        if dry_run:
            if as_json:
                echo_json(plan.to_dict())
            return
        outcomes = sp.run(store, home, plan, samples=samples, canary=canary, per_class=per_class,
                          seed=seed, say=lambda m: echo(m, err=True),
                          protocol=BenchSettings(runs=runs, min_secs=min_secs,
                                                 warmup_secs=warmup_secs,
                                                 cv_threshold=cv_threshold))
    if as_json:
        echo_json({"plan": plan.to_dict(), "classes": [vars(o) for o in outcomes]})
    else:
        def ms(v: float | None) -> str:
            return "" if v is None else f"{v:.3g}"

        echo(table(
            ["class", "devices", "subnet", "precision", "top-1", "promised ms", "measured ms",
             "status"],
            [[o.key, len(o.devices), o.arch or "", o.precision or "",
              "" if o.accuracy is None else f"{o.accuracy:.1%}", ms(o.promised_ms),
              ", ".join(f"{d} {ms(v)}" for d, v in o.measured_ms.items()),
              o.status + (" (nothing to do)" if len(o.skipped_steps) == len(sp.STEPS) else "")
              + (f": {o.reason}" if o.reason else "")]
             for o in outcomes]))
    if any(o.status == "failed" for o in outcomes):
        sys.exit(EXIT_FAILED)
