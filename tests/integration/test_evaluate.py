"""BN recalibration and subnet evaluation on a briefly trained supernet (one thread)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgenas.cli import main
from edgenas.supernets.mbv3 import load_supernet
from edgenas.supernets.subnet_ckpt import load_subnet
from edgenas.training.data import load_data
from edgenas.training.evaluate import evaluate_archs, evaluate_subnet, recalibrate_bn
from edgenas.training.schedule import Phase
from edgenas.training.train import TrainConfig, train_supernet


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    data = load_data("digits", 32, limit=384)
    schedule = [asdict(p) for p in (
        Phase("full", 1, 1, 1, share=0.5, lr=0.1, kd=False),
        Phase("all", 3, 3, 3, share=0.5, lr=0.05, subnets=2, reorder=True, include_min=True),
    )]
    out = tmp_path_factory.mktemp("eval") / "net.pt"
    train_supernet(TrainConfig(out=str(out), batch_size=32, epochs=3, schedule=schedule),
                   data=data, progress=False)
    return load_supernet(out), data, out


def test_recalibration_resets_stats_and_raises_accuracy(trained) -> None:
    net, data, _ = trained
    arch = net.space.smallest()
    raw = net.extract(arch).to(memory_format=torch.channels_last)
    before = evaluate_subnet(raw, arch.resolution, data, calibrate=False)
    mean_before = raw.blocks[-1].project[1].running_mean.clone()
    recalibrate_bn(raw, data.calibration_images(resolution=arch.resolution))
    assert not torch.allclose(mean_before, raw.blocks[-1].project[1].running_mean)
    assert all(m.momentum == 0.1 for m in raw.modules() if isinstance(m, torch.nn.BatchNorm2d))
    after = evaluate_subnet(raw, arch.resolution, data, calibrate=False)
    # Recalibrated statistics must lift the smallest subnet well clear of its stale-BN accuracy.  How
    # far depends on the brief training, whose float results differ between CPUs (oneDNN kernels), so
    # the bound is a margin and a ratio, not a number of images.
    assert after > before + 0.05 and after > 1.5 * before, (before, after)


def test_recalibration_barely_depends_on_batch_order(trained) -> None:
    """A cumulative average of batch statistics: order and batch size shift it by well under 1 %."""
    net, data, _ = trained
    arch = net.space.largest()
    images = data.calibration_images(resolution=32)
    a, b = net.extract(arch), net.extract(arch)
    recalibrate_bn(a, images, batch_size=100)
    recalibrate_bn(b, images.flip(0), batch_size=64)
    assert torch.allclose(a.stem[1].running_var, b.stem[1].running_var, rtol=1e-2)
    assert torch.allclose(a.stem[1].running_mean, b.stem[1].running_mean, rtol=1e-4, atol=1e-5)


def test_recalibration_in_parallel_copies_gives_the_same_statistics(trained) -> None:
    """Workers split the same batches between copies of the model; per-batch statistics are
    summed in batch order, so any number of workers above one gives the same bits however the
    threads were scheduled (what makes an export's model file reproducible), and one copy the same
    values up to float rounding; every BN layer, with the model's own momenta and mode restored."""
    net, data, _ = trained
    arch = net.space.largest()
    images = data.calibration_images(resolution=32)
    one, two, three, again = (net.extract(arch) for _ in range(4))
    recalibrate_bn(one, images, batch_size=32)
    recalibrate_bn(two, images, batch_size=32, workers=2)
    recalibrate_bn(three, images, batch_size=32, workers=3)
    recalibrate_bn(again, images, batch_size=32, workers=3)
    layers = [[m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
              for net in (one, two, three, again)]
    assert len(layers[0]) > 10
    for a, b, c, d in zip(*layers):
        assert torch.equal(b.running_mean, c.running_mean) and torch.equal(c.running_mean,
                                                                           d.running_mean)
        assert torch.equal(b.running_var, c.running_var) and torch.equal(c.running_var,
                                                                         d.running_var)
        assert torch.allclose(a.running_mean, c.running_mean, rtol=1e-4, atol=1e-6)
        assert torch.allclose(a.running_var, c.running_var, rtol=1e-4, atol=1e-6)
        assert int(a.num_batches_tracked) == int(c.num_batches_tracked) > 0
        assert c.momentum == 0.1 and not c.training


def test_evaluate_archs_reuses_data(trained) -> None:
    net, data, _ = trained
    space = net.space
    archs = [space.smallest(), space.largest()] + space.sample_many(3, seed=1)
    results = evaluate_archs(net, archs, data)
    assert [r.arch for r in results] == archs
    assert all(0.0 <= r.top1 <= 1.0 and r.images == data.num_val for r in results)
    resolutions = {a.resolution for a in archs}
    assert len([k for k in data._cache if k[0] == "val"]) == len(resolutions)
    again = evaluate_archs(net, archs[:1], data)
    assert again[0].top1 == results[0].top1  # deterministic


def test_eval_and_subnet_cli(trained, tmp_path: Path) -> None:
    net, _, ckpt = trained
    runner = CliRunner()
    res = runner.invoke(main, ["supernet", "eval", str(ckpt), "--arch", "min", "--json"])
    assert res.exit_code == 0, res.output
    assert '"r24-3333-3333-3333-3333-3333"' in res.output
    res = runner.invoke(main, ["supernet", "eval", str(ckpt), "--arch", "r99-33-33-33-33-33"])
    assert res.exit_code == 1 and "resolution" in res.output
    out = tmp_path / "sub.pt"
    res = runner.invoke(main, ["subnet", "train", str(ckpt), "--arch", "min", "--out", str(out),
                               "--epochs", "0.5", "--batch-size", "32"])
    assert res.exit_code == 0, res.output
    sub = load_subnet(out)
    assert sub.arch == net.space.smallest() and sub.labels == net.labels
    assert sub.meta["from_scratch"] is False and 0 <= sub.meta["val_top1"] <= 1
    x = torch.randn(2, 3, 24, 24)
    assert sub.model(x).shape == (2, 10)
    res = runner.invoke(main, ["subnet", "train", str(ckpt), "--arch", "min", "--out",
                               str(tmp_path / "s.pt"), "--epochs", "0.2", "--from-scratch"])
    assert res.exit_code == 0, res.output
    assert load_subnet(tmp_path / "s.pt").meta["from_scratch"] is True
