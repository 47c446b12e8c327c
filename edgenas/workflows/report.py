"""A static HTML report of a workspace: training, search, predictors, the chosen model, the fleet.

Plain HTML plus PNG plots written beside it (``<name>_files/``), so it opens offline from a file
system or an artifact store.  Every section is optional: the report shows what the workspace has
and says what is missing and which command produces it.  Figures are written for people ("≤ 0.56
ms", "71.2 %", dates), never as raw Python values.

The fleet is also shown by device class (:mod:`edgenas.records.classes`): what each class is, which model
its devices run, the latency promised for it and the latency last measured on it; and, for groups
specialised with ``fleet specialize``, the subnet each class was given (read from
``<home>/specialize/<group>/state.json``, which that command writes as it goes: every key may be
missing).
"""

from __future__ import annotations

import html
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.core.files import atomic_write_text
from edgenas.core.plots import plot_pareto, plot_predictor, plot_training
from edgenas.device.registry import list_devices
from edgenas.fleet.bench import promised_latency
from edgenas.predictors.latency import measured_latency
from edgenas.records.classes import by_class, how
from edgenas.records.deployments import (
    deployed_manifest,
    deployed_names,
    expected_state,
    latest_per_model,
)
from edgenas.records.measurements import find
from edgenas.records.store import Store


@dataclass
class ReportInputs:
    """Everything the report can draw; each part may be empty."""

    title: str = "edgenas report"
    train_logs: list[Path] = field(default_factory=list)
    search: dict[str, Any] | None = None
    predictor_points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    predictor_quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    fleet: list[dict[str, Any]] = field(default_factory=list)
    summary: list[tuple[str, str]] = field(default_factory=list)
    classes: list[dict[str, Any]] = field(default_factory=list)  # fleet_classes()
    specialized: list[dict[str, Any]] = field(default_factory=list)  # specialize_states()


def fleet_rows(store: Store) -> list[dict[str, Any]]:
    """Latest deployment per (device, model) from the workspace database."""

    return [{"device": d.device, "model": d.model_name, "version": d.version,
             "sha256": (d.sha256 or "")[:16], "action": d.action, "status": d.status,
             "reason": d.reason,
             "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.created_at))}
            for d in latest_per_model(store)]


MAX_STATE_BYTES = 8 << 20  # a specialize state file is small; a huge one is not ours
MAX_NAMES = 6  # device names shown per class before "… and N more"


def _names(names: Sequence[str]) -> str:
    """``4: pi-a, pi-b, … and 2 more``."""
    shown = ", ".join(names[:MAX_NAMES])
    more = len(names) - MAX_NAMES
    return f"{len(names)}: {shown}" + (f" … and {more} more" if more > 0 else "")


def _num(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _pct(value: Any, signed: bool = False) -> str:
    v = _num(value)
    if v is None:
        return "–"
    return f"{v * 100:+.1f} %" if signed else f"{v * 100:.1f} %"


def _when(ts: Any) -> str:
    v = _num(ts)
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(v)) if v else ""


def _latency(ms: Any, unit: str = " ms") -> str:
    v = _num(ms)
    return "–" if v is None else f"{_ms(v)}{unit}"


def fleet_classes(home: Path, store: Store) -> list[dict[str, Any]]:
    """One row per (device class, deployed model): what the class is, its devices, the model version
    its devices hold (from ``deployments``), the latency promised for that model on the class (the
    pushed manifest's ``search`` block, by class key or a member's name) and the latest measurement
    of that model on each device of the class (``fleet bench``), with a status in words.

    A class where nothing is deployed has one row saying so."""

    out: list[dict[str, Any]] = []
    for key, members in by_class(list_devices(store)).items():
        names = [d.name for d in members]
        base = {"class": key, "how": how(members[0]), "devices": names}
        held: dict[str, Counter[tuple[str | None, str]]] = {}
        for dev in members:
            for model in deployed_names(store, dev.name):
                dep = expected_state(store, dev.name, model)
                if dep is not None and dep.sha256:
                    held.setdefault(model, Counter())[(dep.version, dep.sha256)] += 1
        if not held:
            out.append({**base, "model": None, "status": "nothing deployed"})
            continue
        rows = find(store, device_class=key)
        for model, versions in sorted(held.items()):
            (version, sha), count = versions.most_common(1)[0]
            manifest = deployed_manifest(store, sha)
            promise = next((p for p in (promised_latency(manifest, n, None, key) for n in names) if p),
                           None)
            stat = promise.statistic if promise else "median"
            latest: dict[str, Any] = {}
            for m in rows:  # oldest first: the last one per device wins
                if m.model_sha256 == sha:
                    latest[m.device] = m
            measured = {d: measured_latency(m.to_dict(), stat) for d, m in latest.items()}
            ms = statistics.median(measured.values()) if measured else None
            delta = (ms - promise.ms) / promise.ms if promise and ms is not None else None
            worst = max(measured.items(), key=lambda kv: abs(kv[1] - promise.ms),
                        default=None) if promise else None
            if len(versions) > 1 or count < len(members):
                status = (f"{count} of {len(members)} devices on {version}"
                          + (f"; {len(versions) - 1} other version(s)" if len(versions) > 1 else ""))
            elif promise is None:
                status = "measured (no promise)" if measured else "not measured yet (no promise)"
            elif not measured:
                status = "not measured yet"
            else:
                off = [d for d, v in measured.items()
                       if abs(v - promise.ms) / promise.ms > promise.error]
                status = f"drift on {', '.join(off)}" if off else "ok"
            out.append({**base, "model": model, "version": version, "sha256": sha,
                        "on_devices": count, "versions": len(versions),
                        "promised_ms": promise.ms if promise else None,
                        "error_band": promise.error if promise else None, "statistic": stat,
                        "measured_ms": ms, "measured_on": sorted(measured), "delta": delta,
                        "worst": worst[0] if worst else None,
                        "measured_at": max((m.created_at for m in latest.values()), default=None),
                        "status": status})
    return out


def specialize_states(home: Path) -> list[dict[str, Any]]:
    """The state of every ``fleet specialize`` group (``<home>/specialize/*/state.json``), read
    defensively: a file being written, truncated or not ours is skipped, a missing key is shown as
    missing."""
    out = []
    for path in sorted((Path(home) / "specialize").glob("*/state.json")):
        try:
            if path.stat().st_size > MAX_STATE_BYTES:
                continue
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("classes"), dict):
            updated = data.get("updated")
            out.append({"group": str(data.get("group") or path.parent.name),
                        "updated": updated if isinstance(updated, str) else None,
                        "classes": {str(k): v for k, v in data["classes"].items()
                                    if isinstance(v, dict)}})
    return out


def classes_html(classes: Sequence[Mapping[str, Any]], specialized: Sequence[Mapping[str, Any]]) -> str:
    """The "Fleet by device class" section."""
    parts = ["<h2 id='fleet-classes'>Fleet by device class</h2>"]
    if not classes:
        parts.append("<p class='missing'>No devices yet: register them with `edgenas device add` or "
                     "`edgenas device import`, then `edgenas device probe`.</p>")
    else:
        parts.append("<p>Devices of one class run a model at the same speed: they share measurements "
                     "and latency predictors, and are held to one promise.</p>")
        rows = []
        for c in classes:
            model = (f"{c['model']} {c.get('version') or ''}".strip()
                     + (f" (on {c.get('on_devices')} of {len(c['devices'])})"
                        if c.get("on_devices") not in (None, len(c["devices"])) else "")
                     if c.get("model") else "–")
            promised = (f"{_latency(c['promised_ms'])} ±{_pct(c.get('error_band'))}"
                        if _num(c.get("promised_ms")) is not None else "–")
            measured = "–"
            if _num(c.get("measured_ms")) is not None:
                on = c.get("measured_on") or []
                measured = (f"{_latency(c['measured_ms'])}"
                            + (f" ({_pct(c.get('delta'), signed=True)})" if c.get("delta") is not None
                               else "")
                            + f", {len(on)} device{'s' if len(on) != 1 else ''}, "
                            + _when(c.get("measured_at")))
            rows.append([c["class"], c.get("how") or "", _names(c["devices"]), model, promised,
                         measured, c.get("status") or ""])
        parts.append(_table(["class", "how it is made", "devices", "deployed model",
                             "promised", "last measured", "status"], rows, "classes"))
    for group in specialized:
        parts.append(f"<h3 id='specialize-{html.escape(group['group'])}'>fleet specialize: group "
                     f"{html.escape(group['group'])}</h3>")
        if group.get("updated"):
            parts.append(f"<p>State of {html.escape(group['updated'].replace('T', ' ').rstrip('Z'))}"
                         " UTC.</p>")
        rows = []
        for key, e in sorted(group["classes"].items()):
            devices = [str(d) for d in e.get("devices") or [] if isinstance(d, str)]
            measured = e.get("measured_ms") if isinstance(e.get("measured_ms"), dict) else {}
            steps = e.get("steps") if isinstance(e.get("steps"), dict) else {}
            done = [s for s in ("measure", "search", "export", "push", "bench") if s in steps]
            status = str(e.get("status") or (f"in progress ({', '.join(done)} done)" if done
                                              else "planned"))
            if e.get("reason"):
                status += f": {e['reason']}"
            rows.append([
                key, _names(devices) if devices else "–",
                str(e.get("representative") or "–"),
                f"≤ {_latency(e.get('budget_ms'))}" if _num(e.get("budget_ms")) else "–",
                str(e.get("arch") or "–"), str(e.get("precision") or "–"),
                _pct(e.get("accuracy")), _latency(e.get("promised_ms")),
                ", ".join(f"{d} {_latency(v)}" for d, v in sorted(measured.items())) or "–",
                status[:300]])
        parts.append(_table(["class", "devices", "measured on", "budget", "subnet", "precision",
                             "top-1", "promised", "measured", "status"], rows, "specialize"))
    return "\n".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _ms(value: Any) -> str:
    """A latency for people: 3 significant digits, '–' when there is none."""
    return f"{float(value):.3g}" if isinstance(value, (int, float)) else "–"


def constraints_text(constraints: Any) -> str:
    """``{"latency_ms": 0.56, "max_size_kb": None, ...}`` as "latency ≤ 0.56 ms, …" (or "none")."""
    if not isinstance(constraints, dict):
        return "none"
    units = {"latency_ms": ("latency", "ms"), "max_size_kb": ("size", "KiB"),
             "max_macs": ("MACs", ""), "max_params": ("parameters", "")}
    said = []
    for key, value in constraints.items():
        if value is None:
            continue
        name, unit = units.get(key, (key.replace("_", " "), ""))
        if isinstance(value, dict):
            said += [f"{name} on {d} ≤ {_ms(v)} {unit}".rstrip() for d, v in sorted(value.items())]
        elif isinstance(value, (int, float)):
            said.append(f"{name} ≤ {_ms(value)} {unit}".rstrip())
        else:
            said.append(f"{name}: {value}")
    return ", ".join(said) or "none"


def model_card(m: dict[str, Any]) -> str:
    """The manifest in words."""
    acc = m.get("accuracy") or {}
    inp = m.get("input") or {}
    q = (inp.get("quantization") or {})
    lines = [
        f"<b>{html.escape(m.get('precision', '?'))}</b> TFLite model of subnet "
        f"<code>{html.escape(m.get('arch', '?'))}</code> from the {html.escape(m.get('space', '?'))}"
        f" supernet: {m.get('macs', 0) / 1e6:.2f} M MACs, {m.get('params', 0) / 1e6:.3f} M "
        f"parameters, {(m.get('model') or {}).get('bytes', 0) / 1024:.0f} KiB.",
        f"Input {inp.get('size')}×{inp.get('size')} RGB ({inp.get('layout', 'NHWC')}, "
        f"{inp.get('dtype')}), normalised with mean {inp.get('mean')} and std {inp.get('std')}"
        + (f"; quantised with scale {q.get('scale'):.5g}, zero point {q.get('zero_point')}."
           if q.get("scale") else "."),
        f"{len(m.get('labels') or [])} classes: "
        f"{html.escape(', '.join(map(str, (m.get('labels') or [])[:12])))}.",
    ]
    if acc:
        lines.append(f"Top-1 on {acc.get('samples')} validation images: float "
                     f"{acc.get('float_top1', 0):.2%}, exported {acc.get('exported_top1', 0):.2%}.")
    if m.get("parity"):
        lines.append(f"Keras rebuild checked against torch: max |Δlogit| = "
                     f"{m['parity'].get('max_abs_logit_diff', 0):.1e}.")
    for dev, lat in (m.get("latency") or {}).items():
        lines.append(f"Measured on <b>{html.escape(dev)}</b>: median "
                     f"{lat.get('median_ms', 0):.3f} ms, p90 {lat.get('p90_ms', 0):.3f} ms, "
                     f"CV {lat.get('cv', 0):.1%} ({html.escape(str(lat.get('runtime', '')))}).")
    lines.append(f"sha256 <code>{html.escape((m.get('model') or {}).get('sha256', ''))}</code>")
    return "<p>" + "</p><p>".join(lines) + "</p>"


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
font-size:.9em;text-align:left}th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee}
code{background:#f4f4f4;padding:0 .2em}.missing{color:#888;font-style:italic}"""


def write_report(inputs: ReportInputs, out: str | Path) -> Path:
    """Render ``inputs`` to ``out`` (HTML) with plots in ``<out stem>_files/``."""
    out = Path(out)
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>"
             f"{html.escape(inputs.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(inputs.title)}</h1>",
             f"<p>Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>"]

    def image(path: Path | None, alt: str, hint: str, section_id: str) -> str:
        if path is None:
            return f'<p class="missing" id="{section_id}">No data yet: {html.escape(hint)}</p>'
        return f'<img id="{section_id}" src="{files.name}/{path.name}" alt="{html.escape(alt)}">'

    if inputs.summary:
        parts.append("<h2 id='summary'>Summary</h2>" + _table(["", ""], inputs.summary, "summary"))
    parts.append("<h2>Training</h2>")
    parts.append(image(plot_training(inputs.train_logs, files / "training.png"),
                       "training loss curve", "run `edgenas supernet train`", "training-curve"))
    parts.append("<h2>Search</h2>")
    pareto = plot_pareto(inputs.search, files / "pareto.png") if inputs.search else None
    parts.append(image(pareto, "Pareto front", "run `edgenas search`", "pareto-plot"))
    if inputs.search:
        s = inputs.search
        parts.append(f"<p>Constraints: {html.escape(constraints_text(s.get('constraints')))}; "
                     f"objective {html.escape(str(s.get('objective') or 'accuracy'))}.</p>")
        verified = s.get("verified", [])
        devices = sorted({d for c in verified for key in ("latency_ms", "measured_ms")
                          for d in (c.get(key) or {})})
        rows = [[c["arch"], f"{float(c['accuracy']):.2%}" if c.get("accuracy") is not None else "",
                 *(f"{_ms((c.get('latency_ms') or {}).get(d))} / "
                   f"{_ms((c.get('measured_ms') or {}).get(d))}" for d in devices),
                 "" if c.get("size_kb") is None else f"{float(c['size_kb']):.0f}"]
                for c in verified]
        if rows:
            headers = ["arch", "pred. top-1", *(f"{d}: pred. / measured ms" for d in devices),
                       "size KiB"]
            parts.append(_table(headers, rows, "verified"))
    parts.append("<h2>Latency predictors</h2>")
    parts.append(image(plot_predictor(inputs.predictor_points, files / "predictor.png"),
                       "predictor error", "run `edgenas measure` and `edgenas predictor fit`",
                       "predictor-plot"))
    if inputs.predictor_quality:
        rows = [[name, q.get("within_5"), q.get("within_10"), q.get("rmse_ms"), q.get("spearman"),
                 q.get("n")] for name, q in inputs.predictor_quality.items()]
        parts.append(_table(["predictor", "within ±5 %", "within ±10 %", "RMSE ms", "Spearman",
                             "held-out n"], rows, "predictor-quality"))
    parts.append("<h2 id='model-card'>Model card</h2>")
    if inputs.models:
        for m in inputs.models:
            parts.append(f"<div class='card'>{model_card(m)}</div>")
    else:
        parts.append("<p class='missing'>No exported model yet: run `edgenas export`.</p>")
    parts.append("<h2 id='fleet'>Fleet</h2>")
    if inputs.fleet:
        parts.append(_table(list(inputs.fleet[0].keys()), [list(r.values()) for r in inputs.fleet],
                            "fleet"))
    else:
        parts.append("<p class='missing'>Nothing deployed yet: run `edgenas fleet push`.</p>")
    parts.append(classes_html(inputs.classes, inputs.specialized))
    # Lets a headless browser (and the test suite) confirm every plot actually decoded.
    parts.append("<script>window.addEventListener('load',function(){var n=0;"
                 "for(var i=0;i<document.images.length;i++){if(document.images[i].naturalWidth>0)"
                 "n++;}document.body.setAttribute('data-images-loaded',n);});</script>")
    parts.append("</body></html>")
    atomic_write_text(out, "\n".join(parts))
    return out
