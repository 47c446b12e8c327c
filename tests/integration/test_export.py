"""Export: the operator graph and its TFLite writer (parity, per precision, against the converter),
manifest, runner round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgenas import build_supernet
from edgenas.cli import main
from edgenas.core.files import sha256_file
from edgenas.export.api import export
from edgenas.export.convert import ExportError, run_tflite
from edgenas.export.graph import build_graph
from edgenas.export.package import ModelPackage
from edgenas.export.pipeline import check_parity, export_model, read_manifest
from edgenas.training.data import load_data
from tests.integration.test_package import schema_errors
from tests.support.supernet_utils import randomize

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", size=32)


@pytest.fixture(scope="module")
def trained(digits):
    """The smallest tiny-space subnet, trained briefly on digits so accuracy means something."""
    torch.manual_seed(0)
    net = build_supernet("mbv3-tiny", 10, labels=digits.labels,
                         normalization=digits.normalization)
    arch = net.space.smallest()
    model = net.extract(arch).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        idx = torch.randint(0, digits.num_train, (64,), generator=gen)
        x, y = digits.train_batch(idx, arch.resolution, gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, arch, model.eval()


def _val(digits, res):
    xs, ys = zip(*digits.val_batches(res))
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16", "dynamic"])
def test_trained_subnet_exports_with_parity_and_accuracy(trained, digits, tmp_path, precision):
    net, arch, model = trained
    calib = digits.calibration_images(300, arch.resolution).numpy()
    result = export_model(model, arch, net.space, digits.labels, digits.normalization,
                          precision, tmp_path, calib, _val(digits, arch.resolution),
                          {"test": True})
    m = result.manifest
    assert result.model_path.exists() and m["model"]["sha256"] == sha256_file(result.model_path)
    assert m["parity"]["max_abs_logit_diff"] <= 1e-4
    assert m["arch"] == arch.to_string() and m["input"]["size"] == arch.resolution
    acc = m["accuracy"]
    assert acc["samples"] == digits.num_val and acc["float_top1"] > 0.6
    if precision == "int8":
        assert m["input"]["dtype"] == "int8" and m["output"]["dtype"] == "int8"
        assert m["input"]["quantization"]["scale"] > 0
        assert abs(acc["exported_top1"] - acc["float_top1"]) <= 0.05
        assert m["calibration"]["images"] == 300
    elif precision in ("fp16", "dynamic"):  # float I/O, weights stored smaller
        assert m["input"]["dtype"] == "float32"
        assert abs(acc["exported_top1"] - acc["float_top1"]) <= 0.02
        assert m["tools"]["writer"].startswith("tensorflow" if precision == "dynamic" else "edgenas")
    else:
        assert m["input"]["dtype"] == "float32"
        assert acc["exported_top1"] == pytest.approx(acc["float_top1"], abs=1 / digits.num_val)
        x, _ = _val(digits, arch.resolution)
        with torch.no_grad():
            want = model(torch.from_numpy(x[:32])).numpy()
        got = run_tflite(str(result.model_path), x[:32].transpose(0, 2, 3, 1))
        assert np.abs(got - want).max() <= 1e-4
    assert read_manifest(tmp_path)["model"]["sha256"] == m["model"]["sha256"]
    # what the exporter writes is what the schema describes and what every reader accepts
    assert m["schema_version"] == "1.0" and "version" not in m
    assert schema_errors(m) == []
    package = ModelPackage.load(tmp_path)
    assert package.manifest.labels == tuple(digits.labels) and package.manifest.precision == precision
    assert package.manifest.input.size == (arch.resolution, arch.resolution)


@pytest.mark.parametrize("space", ["mbv3-w1.0", "mbv3-w1.2"])
def test_smallest_and_largest_of_both_widths_write_exactly(space: str) -> None:
    """The fp32 TFLite model written from the graph computes the torch function."""
    net = randomize(build_supernet(space, 10), seed=4).eval()
    rng = np.random.default_rng(0)
    for arch in (net.space.smallest(), net.space.largest(), net.space.sample(2)):
        model = net.extract(arch).eval()
        x = rng.standard_normal((2, 3, arch.resolution, arch.resolution)).astype(np.float32)
        assert check_parity(build_graph(model, arch.resolution), model, x) <= 1e-4


def test_imagenet_size_subnet_converts_to_int8(tmp_path) -> None:
    net = randomize(build_supernet("mbv3-w1.0", 10), seed=4).eval()
    arch = net.space.smallest()
    calib = np.random.default_rng(0).standard_normal((8, 3, 128, 128)).astype(np.float32)
    result = export_model(net.extract(arch), arch, net.space, [str(i) for i in range(10)],
                          net.normalization, "int8", tmp_path, calib, None)
    assert result.manifest["input"]["shape"] == [1, 128, 128, 3]
    assert result.manifest["accuracy"] == {}


def test_parity_failure_names_the_diverging_block(trained) -> None:
    net, arch, model = trained
    graph = build_graph(model, arch.resolution)
    graph.constants["b3/depthwise/weight"] *= 1.5
    x = np.random.default_rng(1).standard_normal((4, 3, 24, 24)).astype(np.float32)
    with pytest.raises(ExportError, match="first divergence at block_3"):
        check_parity(graph, model, x)


def test_cli_export_and_runner_predict_agree(trained, digits, tmp_path) -> None:
    net, arch, _ = trained
    ckpt = net.save(tmp_path / "supernet.pt", meta={"data": {"source": "digits"}})

    def export(out: Path, precision: str, calibration: int, bn: int, validation: int) -> str:
        result = CliRunner().invoke(main, [
            "export", str(ckpt), "--arch", arch.to_string(), "--precision", precision, "--out",
            str(out), "--calibration-samples", str(calibration), "--bn-samples", str(bn),
            "--validation-samples", str(validation)])
        assert result.exit_code == 0, result.output
        return result.output

    out = tmp_path / "model"
    output = export(out, "int8", 64, 200, 100)
    assert "parity" in output and "sha256" in output
    # each long phase is announced (stderr; CliRunner mixes it in)
    for phase in ("BN statistics", "on 200 training images", "calibrating int8 ranges on 64",
                  "on 100 validation images"):
        assert phase in output, phase
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["source_sha256"] == sha256_file(ckpt)
    assert manifest["provenance"]["bn_recalibrated"] is True
    assert manifest["provenance"]["bn_images"] == 200
    assert manifest["accuracy"]["samples"] == 100 < digits.num_val
    assert manifest["tools"]["writer"] == "edgenas.export.flatbuffer"
    # reproducible: the same export again (BN statistics and ranges on parallel copies, whose
    # scheduling differs run to run) writes the same model, byte for byte
    twin = tmp_path / "model-twin"
    export(twin, "int8", 64, 200, 0)
    assert sha256_file(twin / "model.tflite") == sha256_file(out / "model.tflite")
    again = tmp_path / "model-no-validation"
    export(again, "fp32", 16, 50, 0)
    assert json.loads((again / "manifest.json").read_text())["accuracy"] == {}
    # one validation image through the real runner, in its own process
    x, y = _val(digits, arch.resolution)
    np.save(tmp_path / "x.npy", x[:1].transpose(0, 2, 3, 1))
    proc = subprocess.run([sys.executable, str(REPO / "devices" / "runner.py"), "predict",
                           str(out / "model.tflite"), str(tmp_path / "x.npy"), "--top-k", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    predicted = json.loads(proc.stdout)["predictions"][0]["top_k"][0]["index"]
    direct = run_tflite(str(out / "model.tflite"), x[:1].transpose(0, 2, 3, 1)).argmax(1)[0]
    assert predicted == direct


def test_fine_tuned_subnet_checkpoint_exports_with_its_own_bn_statistics(trained, tmp_path):
    """A subnet checkpoint (what `subnet train` writes) is exported as it is: its data set from
    its meta, its BN statistics kept, no other arch accepted."""
    from edgenas.supernets.subnet_ckpt import save_subnet

    net, arch, model = trained
    ckpt = save_subnet(tmp_path / "subnet.pt", model, arch, net.space, net.labels,
                       net.normalization, {"data": "digits"})
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    result = export(ckpt, None, "int8", tmp_path / "m", calibration_samples=64,
                    validation_samples=100)
    m = result.manifest
    assert m["arch"] == arch.to_string() and m["provenance"]["source_format"] == "edgenas-subnet"
    assert m["provenance"]["bn_recalibrated"] is False and "bn_images" not in m["provenance"]
    assert m["accuracy"]["samples"] == 100 and m["accuracy"]["float_top1"] > 0.6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    other = net.space.largest().to_string()
    with pytest.raises(ExportError, match="cannot be exported as"):
        export(ckpt, other, "int8", tmp_path / "m2", calibration_samples=8)
    assert not (tmp_path / "m2").exists()


def test_export_refuses_without_data_and_detects_tampering(tmp_path) -> None:
    net = build_supernet("mbv3-tiny", 10)
    ckpt = net.save(tmp_path / "s.pt")
    with pytest.raises(ExportError, match="pass --data"):
        export(ckpt, "min", "fp32", tmp_path / "m")
    with pytest.raises(ExportError, match="manifest.json: missing"):
        read_manifest(tmp_path)
    folder = tmp_path / "ok"
    folder.mkdir()
    blob = b"\x1c\x00\x00\x00TFL3" + bytes(64)  # the TFLite identifier, then anything
    (folder / "model.tflite").write_bytes(blob)
    manifest = {"format": "edgenas-model", "schema_version": "1.0", "precision": "fp32",
                "labels": ["a", "b"], "input": {"size": 8, "mean": [0.5], "std": [0.25]},
                "model": {"file": "model.tflite", "sha256": "0" * 64}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="model.sha256: model.tflite has sha256 .* manifest records"):
        read_manifest(folder)
    manifest["model"]["file"] = "../ok/model.tflite"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="model.file: '../ok/model.tflite' is a path"):
        read_manifest(folder)


@pytest.mark.parametrize("space", ["mbv3-w1.0", "mbv3-w1.2"])
def test_fp32_tflite_matches_torch_for_min_max_and_random_archs(space: str, tmp_path) -> None:
    """The exported fp32 model (the package's, through ``export_model``) computes the torch function.

    benchmarks/export.py and the issue's 20-random-arch check run the same path at scale; here
    min, max and one random arch keep the suite fast.
    """
    net = randomize(build_supernet(space, 10), seed=5).eval()
    rng = np.random.default_rng(3)
    for i, arch in enumerate([net.space.smallest(), net.space.largest(),
                              *net.space.sample_many(1, seed=11)]):
        model = net.extract(arch).eval()
        x = rng.standard_normal((2, 3, arch.resolution, arch.resolution)).astype(np.float32)
        result = export_model(model, arch, net.space, [str(c) for c in range(10)],
                              net.normalization, "fp32", tmp_path / str(i), x, None)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = run_tflite(str(result.model_path), x.transpose(0, 2, 3, 1))
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), arch


def test_int8_model_is_fully_integer_and_runs_under_tflite_runtime(trained, digits,
                                                                  tmp_path) -> None:
    net, arch, model = trained
    calib = digits.calibration_images(200, arch.resolution).numpy()
    result = export_model(model, arch, net.space, digits.labels, digits.normalization, "int8",
                          tmp_path, calib, None)
    from edgenas.export.convert import make_interpreter

    interpreter = make_interpreter(str(result.model_path))
    interpreter.allocate_tensors()
    float_tensors = [t["name"] for t in interpreter.get_tensor_details()
                     if np.dtype(t["dtype"]).kind == "f"]
    assert float_tensors == [], f"float tensors in the int8 model: {float_tensors[:5]}"
    # the 32-bit-Pi stand-in: tflite-runtime 2.14 with numpy < 2, in its own environment
    tflite_python = REPO / ".venv-tflite" / "bin" / "python"
    x, _ = _val(digits, arch.resolution)
    np.save(tmp_path / "x.npy", x[:1].transpose(0, 2, 3, 1))
    proc = subprocess.run([str(tflite_python), str(REPO / "devices" / "runner.py"), "predict",
                           str(result.model_path), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["runtime"]["name"] == "tflite_runtime"
    direct = run_tflite(str(result.model_path), x[:1].transpose(0, 2, 3, 1)).argmax(1)[0]
    assert out["predictions"][0]["top_k"][0]["index"] == direct


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_written_model_matches_the_converters(trained, digits, precision) -> None:
    """The writer gives what TensorFlow's converter gives for the Keras rebuild of the same subnet:
    the same compute operators, fp32 outputs equal to float rounding, int8 outputs a quantisation
    step apart on average with the same top-1 and as close to the float model; the signature
    table only when asked for."""
    from ai_edge_litert.interpreter import Interpreter

    from edgenas.export.convert import convert
    from edgenas.export.flatbuffer import write_tflite
    from edgenas.export.graph import activation_ranges
    from edgenas.export.keras_model import build_keras_model

    net, arch, model = trained
    calib = digits.calibration_images(64, arch.resolution).numpy()
    graph = build_graph(model, arch.resolution)
    ranges = activation_ranges(graph, [calib]) if precision == "int8" else None
    written = write_tflite(graph, precision, ranges, signatures=False)
    converted = convert(build_keras_model(model, arch.resolution), precision,
                        calib.transpose(0, 2, 3, 1), signatures=False)

    def ops(blob: bytes) -> list[str]:  # the converter's batch-size glue aside
        it = Interpreter(model_content=blob)
        return sorted(op["op_name"] for op in it._get_ops_details()
                      if op["op_name"] not in ("SHAPE", "STRIDED_SLICE", "PACK"))

    assert ops(written) == ops(converted)
    x, _ = _val(digits, arch.resolution)
    x = x[:64].transpose(0, 2, 3, 1)
    ours, theirs = run_tflite(written, x), run_tflite(converted, x)
    if precision == "fp32":
        assert np.abs(ours - theirs).max() <= 1e-5 * max(1.0, np.abs(theirs).max())
    else:
        # the same calibration, so the same output scale; rounding differs along the way
        step = Interpreter(model_content=written).get_output_details()[0]["quantization"][0]
        assert np.abs(ours - theirs).mean() <= step
        assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.95
        with torch.no_grad():  # and no further from the float model than the converter's
            exact = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
        assert np.abs(ours - exact).mean() <= 1.1 * np.abs(theirs - exact).mean()

    def shapes(blob: bytes) -> list[list[int]]:  # the batch stays unknown (-1), as shipped
        it = Interpreter(model_content=blob)
        return [d["shape_signature"].tolist() for d in it.get_input_details() + it.get_output_details()]

    assert shapes(written) == shapes(converted)
    assert not Interpreter(model_content=written).get_signature_list()
    signed = write_tflite(graph, precision, ranges, signatures=True)
    assert list(Interpreter(model_content=signed).get_signature_list()) == ["serving_default"]


# ---- bounded calibration (issue #26): images are made batch by batch, never held as one float set


def test_calibration_stream_gives_the_data_sets_calibration_images_batch_by_batch(digits) -> None:
    from edgenas.export.api import calibration_stream

    want = digits.calibration_images(100, 24).numpy()
    stream = calibration_stream(digits, 100, 24)
    assert stream.shape == (100, 3, 24, 24)
    np.testing.assert_array_equal(np.concatenate(list(stream.batches(32))), want)
    np.testing.assert_array_equal(stream[10:20].numpy(), want[10:20])


def test_representative_dataset_is_bounded_batches_of_the_stream() -> None:
    """The converter is fed fixed-size NHWC batches read lazily; a short last batch is filled with
    images already seen (min/max unchanged), and no read asks for more than one batch."""
    from edgenas.export.convert import representative_dataset
    from edgenas.export.images import ImageStream

    rng = np.random.default_rng(0)
    images = rng.standard_normal((37, 3, 8, 8)).astype(np.float32)
    reads: list[int] = []

    def load(a: int, b: int) -> np.ndarray:
        reads.append(b - a)
        return images[a:b]

    gen = representative_dataset(ImageStream(37, 8, load), batch=16)
    assert reads == []  # nothing is read before the converter asks
    batches = [b[0] for b in gen()]
    assert [b.shape for b in batches] == [(16, 8, 8, 3)] * 3
    assert max(reads) <= 16 and sum(reads) == 37 + 11
    seen = np.concatenate(batches)
    np.testing.assert_array_equal(seen[:37], images.transpose(0, 2, 3, 1))
    assert seen.min() == images.min() and seen.max() == images.max()


def test_batched_calibration_quantises_like_one_image_at_a_time(trained, digits) -> None:
    """Batches and workers only speed calibration up: every tensor gets the same range (float
    rounding aside: oneDNN may pick another algorithm for another batch size), whichever worker's
    table saw a tensor's extremes."""
    from edgenas.export.graph import activation_ranges

    net, arch, model = trained
    graph = build_graph(model, arch.resolution)
    calib = digits.calibration_images(40, arch.resolution).numpy()
    one = activation_ranges(graph, [calib[i:i + 1] for i in range(len(calib))])
    batched = activation_ranges(graph, [calib[:16], calib[16:32], calib[32:]])
    parallel = activation_ranges(graph, [calib[i:i + 4] for i in range(0, len(calib), 4)],
                                 workers=3)
    assert one.keys() == batched.keys() == parallel.keys() and len(one) > 3 * len(model.blocks)
    for name in one:
        assert one[name] == pytest.approx(batched[name], rel=1e-5, abs=1e-6), name
        assert one[name] == pytest.approx(parallel[name], rel=1e-5, abs=1e-6), name


def test_streamed_export_keeps_parity_int8_io_and_accuracy(trained, digits, tmp_path) -> None:
    from edgenas.export.api import calibration_stream

    net, arch, model = trained
    calib = calibration_stream(digits, 300, arch.resolution)
    val_x, val_y = _val(digits, arch.resolution)
    from edgenas.export.images import ImageStream

    result = export_model(model, arch, net.space, digits.labels, digits.normalization, "int8",
                          tmp_path, calib, (ImageStream.from_array(val_x), val_y))
    m = result.manifest
    assert m["input"]["dtype"] == "int8" and m["output"]["dtype"] == "int8"
    assert m["calibration"]["images"] == 300 and m["parity"]["max_abs_logit_diff"] <= 1e-4
    acc = m["accuracy"]
    assert acc["samples"] == digits.num_val and acc["float_top1"] > 0.6
    assert abs(acc["exported_top1"] - acc["float_top1"]) <= 0.05


def test_wrong_weight_layout_fails_parity_and_writes_nothing(trained, digits, tmp_path,
                                                             monkeypatch) -> None:
    """The parity check guards the writer itself: a depthwise kernel laid out transposed (HW
    swapped) in the flatbuffer is caught, and named, before anything is written."""
    from edgenas.export import flatbuffer
    from edgenas.export.api import calibration_stream

    net, arch, model = trained
    layout = flatbuffer._tflite_layout

    def bad_layout(op, value):
        w, axis = layout(op, value)
        if op.kind == "DEPTHWISE_CONV_2D" and w.shape[1] > 1:
            w = np.ascontiguousarray(w.transpose(0, 2, 1, 3))  # H and W swapped
        return w, axis

    monkeypatch.setattr(flatbuffer, "_tflite_layout", bad_layout)
    with pytest.raises(ExportError, match="float parity check failed.*first divergence at block_"):
        export_model(model, arch, net.space, digits.labels, digits.normalization, "int8",
                     tmp_path / "m", calibration_stream(digits, 32, arch.resolution), None)
    assert not (tmp_path / "m").exists()
