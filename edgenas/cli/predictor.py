"""``edgenas predictor ...``: fit and inspect the predictors learned from measurements.

Each verb is one ``@predictor.command`` function below; add a verb (``fit-accuracy``, say) by adding
one more function — the group needs no other change.  Library imports stay inside the commands so
that ``edgenas --help`` does not pay for numpy/scipy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from edgenas.cli.common import Workspace, echo, echo_json, table
from edgenas.device.registry import resolve_class as resolve
from edgenas.predictors.latency import (
    device_xnnpack,
    evaluate_baseline,
    list_predictors,
    load_predictor,
    predictor_path,
)
from edgenas.predictors.latency_fit import fit
from edgenas.records.store import open_store
from edgenas.space.spec import SearchSpace

if TYPE_CHECKING:
    from edgenas.predictors.memory import MemoryPredictor
    from edgenas.records.store import Store


@click.group("predictor")
def predictor() -> None:
    """Latency (per device) and accuracy predictors."""


def _quality_row(q: dict) -> list[str]:
    return [q["samples"], f"{100 * q['within_5']:.1f} %", f"{100 * q['within_10']:.1f} %",
            f"{q['rmse_ms']:.4g}", f"{q['spearman']:.3f}", f"±{100 * q['p90_rel_error']:.1f} %"]


_STATISTICS = ["median", "min", "mean"]  # edgenas.predictors.latency.STATISTICS, without importing it
_QUALITY_HEADERS = ["subnets", "within ±5 %", "within ±10 %", "RMSE ms", "Spearman", "p90 error"]


_MEMORY_HEADERS = ["subnets", "within ±5 %", "within ±10 %", "RMSE MiB", "Spearman", "p90 error"]


def _memory_row(q: dict) -> list[str]:
    return [q.get("samples", q.get("pairs")), f"{100 * q['within_5']:.1f} %",
            f"{100 * q['within_10']:.1f} %", f"{q['rmse_mib']:.3g}", f"{q['spearman']:.3f}",
            f"±{100 * q['p90_rel_error']:.1f} %"]


def _fit_memory(store: Store, ws: Workspace, device_name: str, precision: str, threads: int,
                space: str) -> tuple[MemoryPredictor | None, str | None]:
    """The memory predictor fitted beside the latency one, or why there is none (old rows carry no
    peak memory; a device measured before it was recorded needs measuring again)."""
    from edgenas.predictors.memory import MemoryPredictorError
    from edgenas.predictors.memory import fit as fit_memory

    try:
        return fit_memory(store, device_name, precision, threads, space=space,
                          save_to=ws.home), None
    except MemoryPredictorError as exc:
        return None, str(exc)


@predictor.command("fit")
@click.option("--device", "device_name", required=True, help="A device with stored measurements.")
@click.option("--precision", default="fp32", show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--space", default=None, help="Search space [default: the one most measured].")
@click.option("--statistic", type=click.Choice(_STATISTICS), default="median", show_default=True,
              help="Predict the median run, the fastest (steadier on a shared device) or the mean "
                   "(a device under a CPU quota).  Search and fleet bench compare measurements of "
                   "the same statistic.")
@click.option("--method", type=click.Choice(["auto", "transfer", "per-device"]), default="auto",
              show_default=True,
              help="auto: transfer from the workspace's other device profiles when there are any and "
                   "it cross-validates at least as well as the device's own fit.")
@click.option("--json", "as_json", is_flag=True, help="Print the saved predictor as JSON.")
@click.pass_obj
def fit_cmd(ws: Workspace, device_name: str, precision: str, threads: int, space: str | None,
            statistic: str, method: str, as_json: bool) -> None:
    """Fit the latency and memory predictors of a device from its stored measurements.

    Prints held-out quality (k-fold cross-validation): the share of subnets predicted within
    ±5 % and ±10 %, RMSE, Spearman rank correlation and the p90 relative error that every
    later prediction carries.  The memory predictor (the model's peak memory, for `search
    --max-memory-mb`) is printed beside the device's own repeatability: subnets measured twice.
    """

    with open_store(ws.ensure()) as store:
        pred = fit(store, device_name, precision, threads, space=space, save_to=ws.home,
                   statistic=statistic, method=method)
        base = evaluate_baseline(store, device_name, precision, threads, space=pred.space,
                                 statistic=statistic)
        memory, why_not = _fit_memory(store, ws, device_name, precision, threads, pred.space)
    path = predictor_path(ws.home, pred.device, precision, threads)
    if as_json:
        echo_json({**pred.to_json(), "path": str(path), "macs_baseline": base,
                   "memory": None if memory is None else memory.to_json(),
                   "memory_not_fitted": why_not})
        return
    served = "" if pred.device == device_name else f" (class {pred.device})"
    echo(f"latency predictor for {device_name}{served} ({precision}, {threads} thread(s), "
               f"{pred.space}, {pred.runtime or 'runtime unknown'}, {statistic} run time): "
               f"{pred.model_name}")
    echo(table(["model", *_QUALITY_HEADERS],
                     [[pred.model_name, *_quality_row(pred.quality)],
                      ["MACs only", *_quality_row(base)]]))
    echo(f"method: {_method_line(pred.extra)}")
    echo(f"saved {path}")
    if memory is None:
        echo(f"memory predictor: not fitted ({why_not})")
        return
    from edgenas.predictors.memory import predictor_path as memory_path

    noise = memory.noise
    rows = [["memory (held-out)", *_memory_row(memory.quality)]]
    if noise:
        rows.append(["same subnets again", *_memory_row(noise)])
    echo("memory predictor (the model's peak memory):")
    echo(table(["", *_MEMORY_HEADERS], rows))
    if not noise:
        echo("noise floor: no subnet measured twice (`edgenas measure --repeats 2`)")
    echo(f"saved {memory_path(ws.home, pred.device, precision, threads)}")


def _method_line(extra: dict) -> str:
    """Which fit was used, and why (the other one's held-out share within ±10 % beside it)."""
    compared = extra.get("compared") or {}
    other = "per-device" if extra.get("method") == "transfer" else "transfer"
    versus = (f" (held-out within ±10 %: {other} {100 * compared[other]['within_10']:.0f} %)"
              if compared.get(other) else "")
    if extra.get("method") == "transfer":
        return f"{extra.get('describe', 'transfer')}{versus}"
    if compared:
        return f"per-device fit, better than the transfer from the other profiles{versus}"
    return "per-device fit (no other device profiles in this workspace to transfer from)"


@predictor.command("show")
@click.option("--device", "device_name", default=None, help="Only this device.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show_cmd(ws: Workspace, device_name: str | None, as_json: bool) -> None:
    """The saved latency and memory predictors and their measured (held-out) error.

    A memory predictor's row is followed by the device's own noise floor where it measured subnets
    twice: a held-out error near it is as good as the device allows."""
    from edgenas.predictors.memory import list_predictors as list_memory

    if device_name is not None:

        with open_store(ws.ensure()) as store:
            device_name = resolve(store, device_name)  # a device's predictors are its class's
    found = list_predictors(ws.home, device_name)
    memory = list_memory(ws.home, device_name)
    if as_json:  # latency ones first, as before memory predictors were listed
        echo_json([{**p.to_json(), "kind": "latency", "path": str(path)} for path, p in found]
                  + [{**m.to_json(), "kind": "memory", "path": str(path)} for path, m in memory])
        return
    if not found and not memory:
        echo("no predictors (fit one with `edgenas predictor fit --device NAME`)")
        return
    if found:
        echo("latency predictors:")
        echo(table(["class", "precision", "threads", "space", "predicts", "model", *_QUALITY_HEADERS],
                   [[p.device, p.precision, p.threads, p.space, p.statistic, p.model_name,
                     *_quality_row(p.quality)] for _, p in found]))
    else:
        echo("no latency predictors")
    if not memory:
        echo("no memory predictors (`predictor fit` fits one where the measurements store the "
             "model's peak memory)")
        return
    rows = []
    for _, m in memory:
        rows.append([m.device, m.precision, m.threads, m.space, "held-out", *_memory_row(m.quality)])
        if m.noise:
            rows.append(["", "", "", "", "same subnets again", *_memory_row(m.noise)])
    echo("memory predictors (the model's peak memory, MiB):")
    echo(table(["class", "precision", "threads", "space", "quality", *_MEMORY_HEADERS], rows))


@predictor.command("predict")
@click.option("--device", "device_name", required=True)
@click.option("--arch", "arch_ids", multiple=True, required=True, help="Arch id, min or max.")
@click.option("--precision", default="fp32", show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def predict_cmd(ws: Workspace, device_name: str, arch_ids: tuple[str, ...], precision: str,
                threads: int, as_json: bool) -> None:
    """Predicted latency of subnets on a device, with the predictor's measured error."""

    with open_store(ws.ensure()) as store:  # a predictor of the other XNNPACK profile is refused
        xnnpack = device_xnnpack(store, device_name)
        klass = resolve(store, device_name)
    pred = load_predictor(ws.home, klass, precision, threads, xnnpack=xnnpack)
    space = SearchSpace.load(pred.space)
    rows = [(a, pred.predict(space, a)) for a in arch_ids]
    if as_json:
        echo_json([{"arch": space.parse(a).to_string(), "latency_ms": ms, "statistic": pred.statistic,
                    "p90_rel_error": pred.error} for a, ms in rows])
        return
    for a, ms in rows:
        echo(f"{space.parse(a).to_string()}  {pred.describe(ms)}  ({device_name}, {precision}, "
                   f"t{threads}, {pred.statistic} run time)")
