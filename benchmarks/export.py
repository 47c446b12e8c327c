"""What an int8 export of the largest ``mbv3-w1.0`` subnet at 224 px costs, phase by phase, against
the Keras ``MobileNetV3Large`` + ``TFLiteConverter`` peer (issue #26).

Each export runs in its own process, one after the other (never side by side: the host has 2
cores), and each reports wall time and peak RSS, per phase and in all:

* ``edgenas``: ``edgenas.export.api.export`` of ``max`` at int8, as ``edgenas export`` runs it, on a
  random-weight ``mbv3-w1.0`` supernet (fresh initialisation): BN recalibrated on the training
  images, int8 calibrated, float and int8 top-1 measured on the validation images;
* ``edgenas-convert``: the peer's work only — the same subnet saved as a subnet checkpoint with its
  own BN statistics (what ``edgenas subnet finetune`` leaves), exported with
  ``validation_samples=0``: graph, parity check, int8 calibration on the same images, write;
* ``baseline`` (``--baseline REV``): the same call with the package of an earlier revision
  (``git archive`` into a temporary folder, first on ``PYTHONPATH``);
* ``peer``: ``keras.applications.MobileNetV3Large(weights=None)`` converted by
  ``TFLiteConverter.from_keras_model`` to full-integer int8 with int8 I/O, calibrated on the same
  images (as float NHWC, one per step, the way its documentation shows).

Phases are the exporter's functions, wrapped in the child process; the peak of each phase is the
process's RSS high-water mark reset at the phase's start (``/proc/self/clear_refs``).  The images
are a folder of synthetic JPEGs unless ``--images`` names an ImageFolder; the ratio compares
seconds per MAC.  Prints a table, writes ``benchmarks/results/export.json``.

    .venv/bin/python benchmarks/export.py --baseline c3dfb8a   # the last converter-path revision
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT = REPO / "benchmarks" / "results" / "export.json"
PEER_MACS = 219_000_000  # Keras MobileNetV3Large at 224 px, 1000 classes (Keras' documentation)

# (module, attribute, phase): the functions of the export path, old and new names alike; a name a
# revision lacks is skipped.  Nested phases count in the outermost one only.
PHASES = [
    ("edgenas.export.convert", "load_tensorflow", "import TensorFlow"),
    ("edgenas.export.api", "_load_source", "load checkpoint, extract"),
    ("edgenas.export.api", "load_data", "scan/decode images"),
    ("edgenas.training.data.dataset", "ImageData.calibration_images", "calibration images"),
    ("edgenas.training.data.stream", "StreamedImageData.calibration_images",
     "calibration images"),
    ("edgenas.export.api", "recalibrate_bn", "BN recalibration"),
    ("edgenas.export.api", "_recalibrate", "BN recalibration"),
    ("edgenas.export.api", "_validation", "validation images"),
    ("edgenas.export.pipeline", "build_keras_model", "Keras rebuild"),
    ("edgenas.export.pipeline", "check_parity", "parity check"),
    ("edgenas.export.pipeline", "convert", "convert + calibrate"),
    ("edgenas.export.pipeline", "float_logits", "validation, float (torch)"),
    ("edgenas.export.pipeline", "run_tflite", "validation, int8 (LiteRT)"),
    ("edgenas.export.pipeline", "tflite_logits", "validation, int8 (LiteRT)"),
    ("edgenas.export.pipeline", "validation_logits", "validation, float (torch graph) + int8 (LiteRT)"),
    ("edgenas.export.pipeline", "make_interpreter", "interpreter"),
    ("edgenas.export.pipeline", "ModelPackage.write", "write package"),
    ("edgenas.export.pipeline", "prepare", "graph + fp32 parity"),
    ("edgenas.export.pipeline", "serialize", "calibrate + write int8"),
]
# the converter's own steps, inside "convert + calibrate"
CONVERTER_PHASES = [
    ("tensorflow.lite.python.optimize.calibrator", "Calibrator.calibrate", "converter calibration"),
    ("tensorflow.lite.python.lite", "_mlir_quantize", "converter quantisation"),
    ("edgenas.export.graph", "activation_ranges", "int8 ranges (torch)"),
    ("edgenas.export.flatbuffer", "write_tflite", "flatbuffer writes"),
]


# ----------------------------------------------------------------------------- in the child process


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class Recorder:
    """Wall seconds and peak RSS per phase; the peak of an enclosing phase survives a nested one."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.depth = 0
        self.outer_peak = 0.0

    def wrap(self, owner: Any, attr: str, phase: str) -> None:
        fn = getattr(owner, attr)
        recorder = self

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if recorder.depth:
                recorder.depth += 1
                try:
                    return fn(*args, **kwargs)
                finally:
                    recorder.depth -= 1
            recorder.depth = 1
            _reset_hwm()
            start, cpu = time.perf_counter(), _cpu_s()
            try:
                return fn(*args, **kwargs)
            finally:
                recorder.depth = 0
                entry = recorder.phases.setdefault(phase, {"seconds": 0.0, "peak_rss_mb": 0.0,
                                                           "calls": 0, "cpu_s": 0.0})
                entry["seconds"] += time.perf_counter() - start
                entry["cpu_s"] += _cpu_s() - cpu
                print(f"[phase] {phase}: {time.perf_counter() - start:.1f} s, "
                      f"peak {_vm_hwm_mb():.0f} MB", flush=True)
                entry["peak_rss_mb"] = max(entry["peak_rss_mb"], _vm_hwm_mb())
                entry["calls"] += 1

        setattr(owner, attr, timed)

    def install(self, table: list[tuple[str, str, str]]) -> None:
        for module, attr, phase in table:
            try:
                owner: Any = importlib.import_module(module)
                *path, name = attr.split(".")
                for part in path:
                    owner = getattr(owner, part)
                getattr(owner, name)
            except (ImportError, AttributeError):
                continue
            self.wrap(owner, name, phase)


def child_export(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    recorder = Recorder()
    _reset_hwm()
    recorder.install(PHASES)
    inner = Recorder()  # the converter's steps, reported beside the phases
    # the converter's steps exist only where the exporter imports TensorFlow (the baseline):
    # importing it here for the others would add TensorFlow's memory to a run that never uses it
    inner.install([p for p in CONVERTER_PHASES
                   if args.child == "baseline" or not p[0].startswith("tensorflow")])
    import edgenas
    from edgenas.export.api import export

    recorder.phases["start-up (imports)"] = {"seconds": time.perf_counter() - start,
                                             "peak_rss_mb": _vm_hwm_mb(), "calls": 1,
                                             "cpu_s": _cpu_s()}

    if args.child == "edgenas-convert":  # the peer's work: own BN statistics, no validation
        result = export(args.subnet, None, "int8", args.out, args.images,
                        calibration_samples=args.calibration, validation_samples=0)
    else:
        result = export(args.ckpt, "max", "int8", args.out, args.images,
                        calibration_samples=args.calibration)
    m = result.manifest
    return {"package": str(Path(edgenas.__file__).parent), "wall_s": time.perf_counter() - start,
            "phases": recorder.phases, "converter": inner.phases, "arch": m["arch"],
            "macs": m["macs"], "parity": m["parity"], "accuracy": m["accuracy"],
            "calibration": m["calibration"], "export_seconds": m["export_seconds"],
            "input": {k: m["input"][k] for k in ("dtype", "shape")},
            "output": {k: m["output"][k] for k in ("dtype", "shape")},
            "bytes": m["model"]["bytes"], "ops": _ops(result.model_path)}


def _ops(model: Path) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    counts: dict[str, int] = {}
    for op in Interpreter(model_path=str(model))._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))


def child_peer(args: argparse.Namespace) -> dict[str, Any]:
    """The tool a user would otherwise reach for, written the way its documentation shows."""
    import numpy as np

    start = time.perf_counter()
    phases: dict[str, dict[str, float]] = {}

    def phase(name: str, fn: Any) -> Any:
        _reset_hwm()
        t, cpu = time.perf_counter(), _cpu_s()
        out = fn()
        phases[name] = {"seconds": time.perf_counter() - t, "peak_rss_mb": _vm_hwm_mb(),
                        "calls": 1, "cpu_s": _cpu_s() - cpu}
        return out

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def load() -> tuple[Any, Any]:
        import keras
        import tensorflow as tf

        return tf, keras

    tf, keras = phase("import TensorFlow", load)
    inner = Recorder()
    inner.install(CONVERTER_PHASES)
    data = np.load(args.images_npy)  # uint8 NHWC, the same images edgenas calibrates on
    mean = np.asarray(args.mean, np.float32)
    std = np.asarray(args.std, np.float32)
    model = phase("build model", lambda: keras.applications.MobileNetV3Large(
        weights=None, input_shape=(224, 224, 3), include_preprocessing=False))

    def representative() -> Any:
        for image in data:
            yield [((image.astype(np.float32) / 255 - mean) / std)[None]]

    def convert() -> bytes:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return bytes(converter.convert())

    blob = phase("convert + calibrate", convert)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.tflite").write_bytes(blob)
    return {"wall_s": time.perf_counter() - start, "phases": phases, "converter": inner.phases,
            "macs": PEER_MACS, "calibration": {"images": int(len(data))}, "bytes": len(blob),
            "ops": _ops(out / "model.tflite")}


# ---------------------------------------------------------------------------- in the parent process


def synthetic_folder(root: Path, per_class: int = 250, classes: int = 10) -> Path:
    """An ImageFolder of smooth colour fields with ellipses (256 px JPEGs): real decoding work,
    activations that are neither constant nor white noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((256, 256), Image.BILINEAR)
            draw = ImageDraw.Draw(img)
            for _ in range(3 + c):
                x0, y0 = rng.integers(0, 200, 2)
                s = int(rng.integers(20, 80))
                draw.ellipse([int(x0), int(y0), int(x0) + s, int(y0) + s],
                             fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            img.save(folder / f"{i:04d}.jpg", quality=90)
    return root


def run_child(mode: str, work: Path, extra: list[str], env: dict[str, str] | None = None,
              timeout: float = 3600) -> dict[str, Any]:
    """Run this script as ``mode`` in a fresh process: its JSON, wall time and peak RSS."""
    report = work / f"{mode}-{time.monotonic_ns()}.json"
    log = work / f"{mode}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--report", str(report),
           *extra]
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not report.exists():
        raise SystemExit(f"{mode} failed ({proc.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    out = json.loads(report.read_text())
    out["process_wall_s"] = wall
    # ru_maxrss is carried across exec (it starts at this parent's RSS at the fork), so the peak is
    # the child's own high-water marks: the largest of its phases' and its last one
    out["peak_rss_mb"] = out.get("process_peak_mb") or usage.ru_maxrss / 1024
    out["cpu_s"] = {"user": usage.ru_utime, "system": usage.ru_stime}
    return out


def baseline_tree(rev: str, work: Path) -> Path:
    """The repository at ``rev`` (its ``edgenas`` package and space specs) in a temporary folder."""
    root = work / f"rev-{rev}"
    root.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=None,
                        help="ImageFolder to calibrate and validate on [default: synthetic JPEGs]")
    parser.add_argument("--calibration", type=int, default=500)
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also export with the package of git revision REV")
    parser.add_argument("--baseline-json", default=None,
                        help="reuse the baseline of an earlier run's JSON instead of rerunning it")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--untuned", action="store_true",
                        help="also export under the system malloc (no huge pages)")
    parser.add_argument("--work", default=None, help="scratch folder [default: a temp folder]")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--subnet", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--images-npy", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mean", type=float, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--std", type=float, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = (child_export(args) if args.child in ("edgenas", "edgenas-convert", "baseline")
                  else child_peer(args))
        result["child_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["process_peak_mb"] = max([_vm_hwm_mb()] + [
            p["peak_rss_mb"] for p in [*result["phases"].values(), *result.get(
                "converter", {}).values()]])
        Path(args.report).write_text(json.dumps(result))
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="edgenas-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    images = Path(args.images) if args.images else work / "images"
    if not args.images and not images.exists():
        synthetic_folder(images)

    import numpy as np
    import torch

    from edgenas import build_supernet
    from edgenas.training.data import load_data

    data = load_data(str(images), size=224)
    torch.manual_seed(0)
    net = build_supernet("mbv3-w1.0", data.num_classes, labels=data.labels,
                         normalization=data.normalization)
    ckpt = net.save(work / "supernet.pt", meta={"data": {"source": str(images)}})
    # the largest subnet as a checkpoint with its own BN statistics (estimated here, untimed):
    # what `edgenas subnet finetune` leaves, exported the way the peer converts
    from edgenas.supernets.subnet_ckpt import save_subnet
    from edgenas.training.evaluate import recalibrate_bn

    largest = net.extract(net.space.largest())
    recalibrate_bn(largest, data.calibration_images(128, 224), batch_size=32)
    subnet = save_subnet(work / "subnet.pt", largest, net.space.largest(), net.space,
                         data.labels, data.normalization,
                         meta={"data": {"source": str(images)}})
    del largest
    calib = data.calibration_images(args.calibration, 224)  # the images edgenas calibrates on
    mean = torch.tensor(data.normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data.normalization["std"]).view(1, 3, 1, 1)
    raw = ((calib * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    np.save(work / "calibration.npy", raw.permute(0, 2, 3, 1).numpy())
    norm = dict(data.normalization)
    del data, calib, raw, net

    common = ["--ckpt", str(ckpt), "--images", str(images), "--calibration",
              str(args.calibration)]
    runs: dict[str, Any] = {}
    load_before = os.getloadavg()
    if args.baseline_json:  # an earlier run's JSON, or a baseline child's own report
        earlier = json.loads(Path(args.baseline_json).read_text())
        runs["baseline"] = earlier["runs"]["baseline"] if "runs" in earlier else earlier
        runs["baseline"].setdefault("process_wall_s", runs["baseline"]["wall_s"])
        runs["baseline"].setdefault("peak_rss_mb", runs["baseline"]["child_peak_rss_mb"])
        runs["baseline"].setdefault("revision", args.baseline)
    elif args.baseline:
        tree = baseline_tree(args.baseline, work)
        runs["baseline"] = run_child("baseline", work, [*common, "--out", str(work / "baseline")],
                                     env={"PYTHONPATH": str(tree)})
        runs["baseline"]["revision"] = args.baseline
    # `edgenas export` re-executes itself under a huge-page malloc (edgenas/cli/allocator.py):
    # its children get the environment the command gives itself; the peer, a plain script, not
    from edgenas.cli.allocator import tuned_environment

    tuned = tuned_environment(dict(os.environ), ["export"]) or {}
    cli_env = {k: tuned[k] for k in ("GLIBC_TUNABLES", "EDGENAS_MALLOC") if k in tuned}
    if args.untuned:  # the same export under the system malloc: what the tuning is worth
        runs["edgenas-untuned"] = run_child("edgenas", work, [
            *common, "--out", str(work / "edgenas-untuned")], env={"EDGENAS_MALLOC": "system"})
    runs["edgenas"] = run_child("edgenas", work, [*common, "--out", str(work / "edgenas")],
                                env=cli_env)
    runs["edgenas-convert"] = run_child("edgenas-convert", work, [
        *common, "--subnet", str(subnet), "--out", str(work / "edgenas-convert")], env=cli_env)
    for name in ("edgenas", "edgenas-convert"):
        runs[name]["malloc"] = cli_env.get("GLIBC_TUNABLES", "system")
    if not args.no_peer:
        runs["peer"] = run_child("peer", work, [
            "--images-npy", str(work / "calibration.npy"), "--out", str(work / "peer"),
            "--mean", *map(str, norm["mean"]), "--std", *map(str, norm["std"])])
    load_after = os.getloadavg()

    report(runs, args, load_before, load_after)


def report(runs: dict[str, Any], args: argparse.Namespace, load_before: tuple[float, ...],
           load_after: tuple[float, ...]) -> None:
    sys.path.insert(0, str(REPO))
    from edgenas.cli.common import table

    names = [n for n in ("baseline", "edgenas-untuned", "edgenas", "edgenas-convert") if n in runs]
    phase_names: list[str] = []
    for n in names:
        for p in runs[n]["phases"]:
            if p not in phase_names:
                phase_names.append(p)
    rows = []
    for p in phase_names:
        row = [p]
        for n in names:
            entry = runs[n]["phases"].get(p)
            row += [f"{entry['seconds']:.1f}", f"{entry['peak_rss_mb']:.0f}"] if entry else ["-", "-"]
        rows.append(row)
    for n in names:
        conv = runs[n].get("converter", {})
        for p, entry in conv.items():
            rows.append([f"  ({p})"] + (["", ""] * names.index(n))
                        + [f"{entry['seconds']:.1f}", f"{entry['peak_rss_mb']:.0f}"]
                        + (["", ""] * (len(names) - names.index(n) - 1)))
    total = ["whole process"]
    for n in names:
        total += [f"{runs[n]['process_wall_s']:.1f}", f"{runs[n]['peak_rss_mb']:.0f}"]
    rows.append(total)
    header = ["phase"]
    for n in names:
        header += [f"{n} s", f"{n} MB"]
    print(f"int8 export of the largest mbv3-w1.0 subnet at 224 px, {args.calibration} "
          f"calibration images")
    print(table(header, rows))

    summary: dict[str, Any] = {}
    if "peer" in runs:
        peer = runs["peer"]
        per_mac_peer = peer["process_wall_s"] / peer["macs"]
        print(f"\npeer (Keras MobileNetV3Large, {peer['macs'] / 1e6:.0f} M MACs): "
              f"{peer['process_wall_s']:.1f} s, {peer['peak_rss_mb']:.0f} MB")
        for n in names:
            run = runs[n]
            ratio = (run["process_wall_s"] / run["macs"]) / per_mac_peer
            cpu_ratio = None
            if "cpu_s" in run and "cpu_s" in peer:  # less sensitive to other load on the host
                cpu_ratio = (sum(run["cpu_s"].values()) / run["macs"]) / (
                    sum(peer["cpu_s"].values()) / peer["macs"])
            summary[n] = {"seconds": run["process_wall_s"], "peak_rss_mb": run["peak_rss_mb"],
                          "macs": run["macs"], "time_per_mac_vs_peer": ratio,
                          "cpu_time_per_mac_vs_peer": cpu_ratio,
                          "rss_vs_peer": run["peak_rss_mb"] / peer["peak_rss_mb"]}
            print(f"{n}: {run['process_wall_s']:.1f} s, {run['peak_rss_mb']:.0f} MB peak, "
                  f"{run['macs'] / 1e6:.0f} M MACs -> {ratio:.2f}x the peer's time per MAC "
                  f"(goal <= 0.5; CPU time: "
                  f"{'-' if cpu_ratio is None else f'{cpu_ratio:.2f}x'}), "
                  f"peak RSS {run['peak_rss_mb'] / 1024:.2f} GB (goal <= 2)")
        summary["peer"] = {"seconds": peer["process_wall_s"], "peak_rss_mb": peer["peak_rss_mb"],
                           "macs": peer["macs"]}
    record = {"benchmark": "int8 export, largest mbv3-w1.0 subnet, 224 px",
              "calibration_images": args.calibration,
              "images": args.images or "synthetic ImageFolder (10 classes x 250 JPEGs, 256 px)",
              "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                       "python": platform.python_version(),
                       "loadavg_before": list(load_before), "loadavg_after": list(load_after)},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "summary": summary, "runs": runs}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
