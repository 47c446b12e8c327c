"""A static HTML report of a workspace: training, search, predictors, the chosen model, the fleet.

Plain HTML plus PNG plots written beside it (``<name>_files/``), so it opens offline from a file
system or an artifact store.  Every section is optional: the report shows what the workspace has
and says what is missing and which command produces it.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.files import atomic_write_text
from edgenas.store import Store


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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    return records


def plot_training(logs: Sequence[Path], out: Path) -> Path | None:
    """Loss per step, one colour per progressive-shrinking phase."""
    steps = [r for log in logs if log.exists() for r in read_jsonl(log) if r.get("event") == "step"]
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    phases: dict[str, list[tuple[int, float]]] = {}
    for r in steps:
        phases.setdefault(str(r.get("phase")), []).append((int(r["step"]), float(r["loss"])))
    for name, pts in phases.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".-", ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (CE + KD)")
    ax.set_title("Supernet training (progressive shrinking)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_pareto(search: dict[str, Any], out: Path) -> Path | None:
    """Predicted candidates, the predicted Pareto front, measured points and the budget line."""
    cands = search.get("evaluated") or search.get("candidates") or []
    if not cands:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))

    def worst(d: dict[str, float]) -> float | None:
        return max(d.values()) if d else None

    pts = [(worst(c.get("latency_ms", {})), c["accuracy"]) for c in cands]
    pts = [p for p in pts if p[0] is not None]
    if pts:
        ax.scatter(*zip(*pts), s=8, c="#bbbbbb", label="evaluated (predicted)")
    front = [(worst(c.get("latency_ms", {})), c["accuracy"]) for c in search.get("front", [])]
    front = sorted(p for p in front if p[0] is not None)
    if front:
        ax.plot(*zip(*front), "o-", c="#1f77b4", ms=4, label="Pareto front (predicted)")
    measured = [(worst(c["measured_ms"]), c["accuracy"]) for c in search.get("verified", [])
                if c.get("measured_ms")]
    if measured:
        ax.scatter(*zip(*measured), marker="s", s=40, c="#d62728", label="measured on device",
                   zorder=5)
    chosen = search.get("chosen")
    if chosen and chosen.get("measured_ms"):
        ax.scatter([worst(chosen["measured_ms"])], [chosen["accuracy"]], marker="*", s=250,
                   c="gold", edgecolors="k", zorder=6, label="chosen (measured)")
    budget = (search.get("constraints") or {}).get("latency_ms")
    if budget:
        ax.axvline(budget, ls="--", c="k", lw=1, label=f"budget {budget:g} ms")
    ax.set_xlabel("latency, worst device (ms)")
    ax.set_ylabel("predicted top-1")
    ax.set_title("Search: accuracy vs latency")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_predictor(points: dict[str, list[tuple[float, float]]], out: Path) -> Path | None:
    """Predicted vs measured latency per device, with the ±10 % band."""
    if not any(points.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    hi = 0.0
    for name, pts in points.items():
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, label=name)
            hi = max(hi, max(max(p) for p in pts))
    xs = [0, hi * 1.05]
    ax.plot(xs, xs, "k-", lw=1)
    ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="k", alpha=0.08,
                    label="±10 %")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("Latency predictor, per device")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _save(fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _plt().close(fig)
    return out


def fleet_rows(store: Store) -> list[dict[str, Any]]:
    """Latest deployment per (device, model) from the workspace database."""
    from edgenas.records.deployments import latest_per_model

    return [{"device": d.device, "model": d.model_name, "version": d.version,
             "sha256": (d.sha256 or "")[:16], "action": d.action, "status": d.status,
             "reason": d.reason,
             "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.created_at))}
            for d in latest_per_model(store)]


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
    # Lets a headless browser (and the test suite) confirm every plot actually decoded.
    parts.append("<script>window.addEventListener('load',function(){var n=0;"
                 "for(var i=0;i<document.images.length;i++){if(document.images[i].naturalWidth>0)"
                 "n++;}document.body.setAttribute('data-images-loaded',n);});</script>")
    parts.append("</body></html>")
    atomic_write_text(out, "\n".join(parts))
    return out
