"""Figures shared by the search's output and the workspace report: PNGs written beside their data.

matplotlib is imported on first use (with the file-only Agg backend), so a command that draws
nothing never pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgenas.core.progress import read_jsonl


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
