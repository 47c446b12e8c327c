"""``edgenas quickstart``: the whole loop on the embedded defaults, with this machine as the device.

Train a small supernet on the digits data → register the host as device ``local`` → measure
sampled subnets there (fp32 and int8) → fit latency and accuracy predictors → pick a latency budget
from the measured range → search under it (top candidates verified on the device) → export the
choice to int8 and fp32 → evaluate, benchmark, push to the local "fleet", run one prediction →
summary table and HTML report.

Every step keeps its output in the workspace and is skipped or resumed on a re-run, so a second
run only re-benchmarks and re-renders.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgenas.core.errors import EdgeNASError
from edgenas.core.files import sha256_file
from edgenas.core.progress import ProgressFn, Reporter, reporter
from edgenas.device.probe import setup
from edgenas.device.registry import add_device, get_device, make_device
from edgenas.device.registry import resolve_class as resolve
from edgenas.device.session import DeviceSession
from edgenas.export.package import ModelPackage
from edgenas.fleet.predict import input_file, predict_package
from edgenas.fleet.push import push
from edgenas.measure.bench import BenchSettings, bench_model
from edgenas.measure.campaign import measure
from edgenas.predictors.accuracy import fit_and_save
from edgenas.predictors.latency import list_predictors
from edgenas.predictors.latency_fit import fit
from edgenas.records import measurements
from edgenas.records.store import Store, open_store
from edgenas.search.problem import Candidate, Constraints
from edgenas.space.spec import Arch, SearchSpace
from edgenas.workflows.report import (
    ReportInputs,
    fleet_classes,
    fleet_rows,
    specialize_states,
    write_report,
)

# A shorter protocol than the default (runs >= 30 and >= 0.3 s, no re-run when noisy): the demo
# measures dozens of sub-millisecond models on a laptop-class host and should finish in minutes.
QUICK_BENCH_KW = {"runs": 30, "min_secs": 0.3, "warmup_runs": 1, "warmup_secs": 0.1,
                  "retries": 0}


@dataclass
class QuickstartConfig:
    home: Path
    minutes: float = 5.0
    space: str = "mbv3-tiny"
    data: str = "digits"
    measure_samples: int = 16
    accuracy_samples: int = 40
    threads: int = 1
    budget_quantile: float = 0.4
    limit: int | None = None
    seed: int = 0
    verify_top: int = 3
    population: int = 48
    generations: int = 10

    @property
    def root(self) -> Path:
        return self.home / "quickstart"

    @property
    def ckpt(self) -> Path:
        return self.root / "supernet.pt"


class Steps:
    """Numbered step headers with wall time, reported as progress events (``step``: the CLI draws them
    on stderr; stdout keeps the summary); ``echo`` adds a detail line to the current step."""

    def __init__(self, total: int, say: Reporter) -> None:
        self.total, self.n, self.say = total, 0, say
        self.started = time.monotonic()
        self.last = self.started

    def echo(self, text: str) -> None:
        self.say("", text)

    def __call__(self, title: str) -> None:
        now = time.monotonic()
        if self.n:
            self.echo(f"      done in {now - self.last:.0f} s")
        self.n += 1
        self.last = now
        self.say("quickstart", title, done=self.n, total=self.total, level="step")

    def finish(self) -> float:
        self.echo(f"      done in {time.monotonic() - self.last:.0f} s")
        return time.monotonic() - self.started


def train_step(cfg: QuickstartConfig, echo: Callable[[str], None]) -> dict[str, Any]:
    """Reuse a finished supernet, resume an interrupted one, or train from scratch."""
    from edgenas.supernets.checkpoint import load_checkpoint  # lazy: torch stays out of CLI start-up
    from edgenas.training.train import (  # lazy: torch stays out of CLI start-up
        TrainConfig,
        state_path,
        train_supernet,
    )

    if cfg.ckpt.exists():
        meta = load_checkpoint(cfg.ckpt).get("meta") or {}
        if (meta.get("training") or {}).get("complete"):
            echo(f"      reusing {cfg.ckpt} (val top-1 {meta.get('val_top1')})")
            return meta
    resume = state_path(cfg.ckpt).exists()
    tc = TrainConfig(out=str(cfg.ckpt), space=cfg.space, data=cfg.data, minutes=cfg.minutes,
                     seed=cfg.seed, limit=cfg.limit)
    train_supernet(tc, resume=resume, threads=cfg.threads if cfg.threads > 0 else None)
    return load_checkpoint(cfg.ckpt).get("meta") or {}


def local_device_step(store: Store, cfg: QuickstartConfig) -> dict[str, Any]:
    """Register this machine as ``local`` (runner run by this very Python) and set it up."""

    try:
        device = get_device(store, "local")
    except EdgeNASError:
        device = add_device(store, make_device("local", "local", home=cfg.home,
                                               python=sys.executable, groups=("quickstart",)))
    with DeviceSession(cfg.home, device) as session:
        return setup(session)


def choose_budget(store: Store, space: str, threads: int, quantile: float
                  ) -> tuple[float, str, str]:
    """A latency budget inside the measured range: the ``quantile`` of the faster precision."""

    rows = measurements.medians(store, resolve(store, "local"), space, threads)
    by: dict[str, list[float]] = {}
    for precision, ms in rows:
        by.setdefault(precision, []).append(float(ms))
    if not by:
        raise EdgeNASError("no measurements on the local device; the measuring step failed")
    precision = min(by, key=lambda p: float(np.median(by[p])))
    values = np.asarray(by[precision])
    budget = float(np.quantile(values, quantile))
    why = (f"{int(quantile * 100)}th percentile of {len(values)} measured {precision} subnets "
           f"(range {values.min():.3f}-{values.max():.3f} ms)")
    return budget, precision, why


def budget_step(store: Store, cfg: QuickstartConfig) -> tuple[float, str]:
    """Choose the budget once and keep it: later runs add measurements (the search verifies
    candidates), which must not move the target of a re-run."""
    path = cfg.root / "budget.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return float(saved["budget_ms"]), str(saved["why"])
    budget, _, why = choose_budget(store, cfg.space, cfg.threads, cfg.budget_quantile)
    path.write_text(json.dumps({"budget_ms": budget, "why": why}))
    return budget, why


def previous_search(cfg: QuickstartConfig, budget: float) -> Any:
    """The search already run for this supernet and budget, if any (a re-run must not re-decide:
    the verification measurements it added would otherwise shift the predictors and the choice)."""
    from edgenas.search.job import SearchOutcome  # lazy: torch stays out of CLI start-up

    path = cfg.root / "search" / "search.json"
    try:
        result = json.loads(path.read_text())
        chosen = result["chosen"]
    except (OSError, ValueError, KeyError):
        return None
    if (not chosen or result.get("supernet_sha256") != sha256_file(cfg.ckpt)
            or (result.get("constraints") or {}).get("latency_ms") != budget):
        return None
    candidate = Candidate(Arch.from_string(chosen["arch"]), float(chosen["accuracy"]),
                          dict(chosen["latency_ms"]), float(chosen["size_kb"]),
                          int(chosen["macs"]), dict(chosen.get("measured_ms") or {}))
    return SearchOutcome(result, candidate, path)


def export_step(cfg: QuickstartConfig, arch: str, precision: str, search_json: Path) -> Path:
    """Export the chosen arch unless the same arch of the same supernet is already there."""
    from edgenas.export.api import export  # lazy: torch stays out of CLI start-up
    from edgenas.export.pipeline import read_manifest  # lazy: torch stays out of CLI start-up

    out = cfg.root / "models" / precision
    try:
        m = read_manifest(out)
        if m["arch"] == arch and m["provenance"].get("source_sha256") == sha256_file(cfg.ckpt):
            return out
    except EdgeNASError:
        pass
    export(cfg.ckpt, arch, precision, out, cfg.data, calibration_samples=300, search=search_json)
    return out


def predict_step(cfg: QuickstartConfig, model_dir: Path) -> dict[str, Any]:
    """One validation image through the on-device runner's ``predict``."""
    from edgenas.training.data import load_data  # lazy: torch stays out of CLI start-up

    manifest = json.loads((model_dir / "manifest.json").read_text())
    data = load_data(cfg.data, size=manifest["input"]["size"])
    image = data.val_x[0].permute(1, 2, 0).numpy()  # uint8 HWC: the runner normalises it
    sample = cfg.root / "sample.npy"
    np.save(sample, image)
    with open_store(cfg.home) as store:
        device = get_device(store, "local")
    package = ModelPackage.load(model_dir)
    with DeviceSession(cfg.home, device) as session:
        result = predict_package(session, package.model_path, package.sha256, package.manifest_path,
                                 input_file(sample), top_k=3, timeout=120)
    result["true_label"] = data.labels[int(data.val_y[0])]
    return result


def report_inputs(home: Path, store: Store, *, ckpt: Path | None = None,
                  search_json: Path | None = None, model_dirs: list[Path] | None = None,
                  summary: list[tuple[str, str]] | None = None) -> Any:
    """Collect what the workspace holds for :func:`edgenas.workflows.report.write_report`."""

    inputs = ReportInputs(title="edgenas report", summary=summary or [])
    root = home / "quickstart"
    ckpt = ckpt or (root / "supernet.pt")
    inputs.train_logs = [p for p in [Path(str(ckpt) + ".log.jsonl")] if p.exists()]
    search_json = search_json or (root / "search" / "search.json")
    if search_json.exists():
        inputs.search = json.loads(search_json.read_text())
    for _path, pred in list_predictors(home):
        try:
            space = SearchSpace.load(pred.space)
        except EdgeNASError:
            continue
        rows = measurements.best_by_arch(store, pred.device, pred.precision, pred.threads,
                                         pred.space)
        key = f"{pred.device}/{pred.precision}/t{pred.threads}"
        archs = [space.parse(r[0]) for r in rows]
        if archs:
            predicted = pred.predict_many(space, archs)
            inputs.predictor_points[key] = [(float(r[1]), float(p)) for r, p in
                                            zip(rows, predicted)]
        q = pred.quality
        inputs.predictor_quality[key] = {"within_5": q.get("within_5"),
                                         "within_10": q.get("within_10"),
                                         "rmse_ms": q.get("rmse_ms"),
                                         "spearman": q.get("spearman"), "n": q.get("samples")}
    dirs = model_dirs if model_dirs is not None else sorted((root / "models").glob("*"))
    for d in dirs:
        if (d / "manifest.json").exists():
            inputs.models.append(json.loads((d / "manifest.json").read_text()))
    inputs.fleet = fleet_rows(store)
    inputs.classes, inputs.specialized = fleet_classes(home, store), specialize_states(home)
    return inputs


def run_quickstart(cfg: QuickstartConfig, progress: bool | ProgressFn = True) -> dict[str, Any]:
    """Run every step (skipping what is done) and return the summary; see the module doc.
    ``progress``: where the steps and the campaign's progress go (see
    :func:`edgenas.core.progress.reporter`:
    True draws them on stderr)."""
    from edgenas.search.job import run_search  # lazy: torch stays out of CLI start-up

    cfg.root.mkdir(parents=True, exist_ok=True)
    quick_bench = BenchSettings(threads=cfg.threads, **QUICK_BENCH_KW)
    say = reporter(progress)
    steps = Steps(9, say)
    echo = steps.echo
    steps(f"train a {cfg.space} supernet on {cfg.data} (budget {cfg.minutes:g} min)")
    meta = train_step(cfg, echo)

    with open_store(cfg.home) as store:
        steps("register this machine as device 'local' and set up the runner")
        info = local_device_step(store, cfg)
        echo(f"      runner {info.get('runtime', {}).get('name')} "
             f"{info.get('runtime', {}).get('version')} on {info.get('platform', {}).get('machine')}")

        steps(f"measure {cfg.measure_samples} subnets on 'local' (fp32 and int8)")
        report = measure(store, cfg.home, cfg.ckpt, ["local"], cfg.measure_samples,
                         ["fp32", "int8"], cfg.threads, cfg.seed, workers=2, progress=say.sink,
                         settings=quick_bench)
        if not report.complete:
            raise EdgeNASError(f"measurement incomplete: {json.dumps(report.to_dict())[:500]}")

        steps("fit latency predictors (fp32, int8) and the accuracy predictor")
        latency = {}
        for precision in ("fp32", "int8"):
            pred = fit(store, "local", precision, cfg.threads, space=cfg.space, save_to=cfg.home)
            latency[precision] = pred
            q = pred.quality
            echo(f"      latency {precision}: {100 * q['within_10']:.0f} % within ±10 %, "
                 f"Spearman {q['spearman']:.3f}, p90 error ±{100 * pred.error:.1f} %")
        acc, _ = fit_and_save(cfg.home, cfg.ckpt, cfg.accuracy_samples, cfg.data, cfg.seed,
                              None, limit=cfg.limit)
        echo(f"      accuracy: held-out RMSE {100 * acc.rmse:.2f} points, Spearman "
             f"{acc.quality['spearman']:.3f} over {acc.samples} subnets")

        steps("pick a latency budget from the measured range and search under it")
        budget, why = budget_step(store, cfg)
        echo(f"      budget {budget:.3f} ms: {why}")
        outcome = previous_search(cfg, budget)
        if outcome is None:
            outcome = run_search(store, cfg.home, cfg.ckpt, ["local"],
                                 Constraints(latency_ms=budget), precision="auto",
                                 objective="accuracy", threads=cfg.threads,
                                 out_dir=cfg.root / "search", verify_top=cfg.verify_top,
                                 population=cfg.population, generations=cfg.generations,
                                 seed=cfg.seed, progress=True)
        else:
            echo(f"      reusing {outcome.path}")
        chosen = outcome.chosen
        if chosen is None:
            raise EdgeNASError("the search found no candidate")
        echo(f"      chosen {chosen.arch} (search precision {outcome.result['precision']['local']})")

        steps("export the chosen subnet to int8 and fp32 TFLite (with validation accuracy)")
        assert outcome.path is not None
        dirs = {p: export_step(cfg, chosen.arch.to_string(), p, outcome.path)
                for p in ("int8", "fp32")}

        steps("benchmark both models on 'local' and push the int8 model to the local fleet")
        benches = {p: bench_model(store, cfg.home, "local", d, threads=cfg.threads)
                   for p, d in dirs.items()}
        fan = push(store, cfg.home, [get_device(store, "local")], ModelPackage.open(dirs["int8"]),
                   "quickstart")
        pushed = fan.results[0] if fan.results else None

        steps("run one prediction through the on-device runner")
        prediction = predict_step(cfg, dirs["int8"])

        steps("summary and report")
        manifests = {p: json.loads((d / "manifest.json").read_text()) for p, d in dirs.items()}
        summary = summarize(cfg, meta, chosen, manifests, benches, latency, budget, why,
                            prediction, pushed)
        inputs = report_inputs(cfg.home, store, ckpt=cfg.ckpt, search_json=outcome.path,
                               model_dirs=list(dirs.values()),
                               summary=[(k, str(v)) for k, v in summary["table"]])
        report_path = write_report(inputs, cfg.home / "report.html")
    summary["report"] = str(report_path)
    summary["seconds"] = round(steps.finish(), 1)
    (cfg.root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def summarize(cfg: QuickstartConfig, meta: dict[str, Any], chosen: Any,
              manifests: dict[str, dict[str, Any]], benches: dict[str, dict[str, Any]],
              latency: dict[str, Any], budget: float, why: str, prediction: dict[str, Any],
              pushed: Any) -> dict[str, Any]:
    """The final numbers, as rows for the terminal and the report."""

    space = SearchSpace.load(cfg.space)
    m8, m32 = manifests["int8"], manifests["fp32"]
    top = (prediction.get("predictions") or [{}])[0].get("top_k") or [{}]
    rows: list[tuple[str, Any]] = [
        ("supernet", f"{cfg.space} on {cfg.data}, val top-1 min/max "
                     f"{meta.get('val_top1', {}).get('min', 0):.2%} / "
                     f"{meta.get('val_top1', {}).get('max', 0):.2%}"),
        ("latency budget", f"{budget:.3f} ms ({why})"),
        ("chosen arch", chosen.arch.to_string()),
        ("MACs / params", f"{m8['macs'] / 1e6:.2f} M / {m8['params'] / 1e6:.3f} M"),
        ("size int8 / fp32", f"{m8['model']['bytes'] / 1024:.0f} KiB / "
                             f"{m32['model']['bytes'] / 1024:.0f} KiB"),
        ("accuracy float / int8 / fp32 tflite",
         f"{m8['accuracy']['float_top1']:.2%} / {m8['accuracy']['exported_top1']:.2%} / "
         f"{m32['accuracy']['exported_top1']:.2%} ({m8['accuracy']['samples']} val images)"),
        ("predicted top-1 (search)", f"{chosen.accuracy:.2%}"),
    ]
    for p in ("int8", "fp32"):
        pred = latency[p]
        predicted = pred.predict(space, chosen.arch)
        rows.append((f"latency {p}: predicted vs measured",
                     f"{pred.describe(predicted)} vs {benches[p]['median_ms']:.3f} ms median "
                     f"(p90 {benches[p]['p90_ms']:.3f}, CV {benches[p]['cv']:.1%})"))
    rows.append(("fleet push (local)", f"{pushed.status} {pushed.version or ''}" if pushed
                 else "-"))
    rows.append(("runner predict", f"top-1 '{top[0].get('label')}' "
                 f"p={top[0].get('probability', 0):.2f} (true '{prediction.get('true_label')}')"))
    return {"table": rows, "chosen": chosen.arch.to_string(), "budget_ms": budget,
            "int8": {"manifest": m8, "bench": benches["int8"]},
            "fp32": {"manifest": m32, "bench": benches["fp32"]}}

