"""``edgenas predictor show``: the memory predictors listed beside the latency ones, each with its
held-out quality, and a memory predictor's row followed by the device's own noise floor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edgenas import SearchSpace
from edgenas.cli import main
from edgenas.predictors import memory as mp
from edgenas.predictors.latency import LatencyPredictor

SPACE = SearchSpace.load("mbv3-tiny")
LATENCY_QUALITY = {"samples": 30, "within_5": 0.8, "within_10": 0.9, "rmse_ms": 0.12,
                   "spearman": 0.97, "p90_rel_error": 0.07}


def _show(home: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--home", str(home), "predictor", "show", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _memory_predictor(device: str, noise: dict | None) -> mp.MemoryPredictor:
    archs = SPACE.sample_many(12, seed=2)
    y = np.asarray([6.0 + mp.features(SPACE, a)["peak_act_elems"] / 2**18 for a in archs])
    names, coef, scale, q = mp.fit_arrays(SPACE, archs, y)
    return mp.MemoryPredictor(device, "fp32", 1, SPACE.name, names, list(coef), list(scale), 10, q,
                              extra={"repeatability": noise} if noise else {})


def test_memory_predictors_are_listed_beside_the_latency_ones_with_held_out_quality(tmp_path):
    assert "no predictors" in _show(tmp_path)
    LatencyPredictor("pi-cls", "fp32", 1, SPACE.name, "macs", ["invoke"], [1.0], [1.0], 10,
                     dict(LATENCY_QUALITY)).save(tmp_path)
    assert "no memory predictors" in _show(tmp_path)
    noise = mp.repeatability([(10.0, 10.2), (20.0, 19.0), (30.0, 30.0)])
    with_noise = _memory_predictor("pi-cls", noise)
    with_noise.save(tmp_path)
    _memory_predictor("zero-cls", None).save(tmp_path)
    (tmp_path / "predictors" / "memory-broken-fp32-t1.json").write_text("{not json")

    out = _show(tmp_path)
    latency, memory = out.split("memory predictors (the model's peak memory, MiB):")
    assert "latency predictors:" in latency and "pi-cls" in latency and "90.0 %" in latency
    lines = memory.strip().splitlines()
    assert "RMSE MiB" in lines[0] and "p90 error" in lines[0]
    held_out = next(line for line in lines if line.startswith("pi-cls"))
    assert "held-out" in held_out and f"±{100 * with_noise.error:.1f} %" in held_out
    again = lines[lines.index(held_out) + 1]  # the noise floor, right under its predictor
    assert "same subnets again" in again and f"±{100 * noise['p90_rel_error']:.1f} %" in again
    assert any(line.startswith("zero-cls") for line in lines)
    assert "memory-broken-fp32-t1.json: skipped" in latency and "broken" not in memory  # warned

    listed = CliRunner().invoke(main, ["--home", str(tmp_path), "predictor", "show", "--json"])
    entries = json.loads(listed.stdout)
    assert [(e["kind"], e["device"]) for e in entries] == [
        ("latency", "pi-cls"), ("memory", "pi-cls"), ("memory", "zero-cls")]
    assert entries[1]["quality"]["samples"] == 12 and entries[1]["extra"]["repeatability"] == noise
