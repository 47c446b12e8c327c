"""The elastic supernet: extraction parity, elastic kernel/expand/depth, checkpoints."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import torch

from edgenas import ArchError, CheckpointError, SearchSpace, build_supernet, load_supernet
from edgenas.supernets.checkpoint import read_torch_file
from tests.support.supernet_utils import randomize


@pytest.fixture(scope="module", params=["mbv3-w1.0", "mbv3-w1.2"])
def supernet(request: pytest.FixtureRequest):
    net = build_supernet(request.param, num_classes=10)
    return randomize(net, seed=1).eval()


def _archs(space: SearchSpace, count: int, seed: int):
    return [space.smallest(), space.largest()] + space.sample_many(count, seed)


def test_extracted_subnet_matches_active_supernet(supernet) -> None:
    """Smallest, largest and 50 random archs at resolutions across the range, both widths."""
    space = supernet.space
    archs = _archs(space, 50, seed=42)
    # three resolutions across the range; the largest arch also runs at the top resolution
    resolutions = [space.resolutions[0], 160, 192]
    torch.manual_seed(0)
    worst = 0.0
    for i, arch in enumerate(archs):
        if i != 1:
            arch = replace(arch, resolution=resolutions[i % len(resolutions)])
        x = torch.randn(1, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            expected = supernet.set_active(arch)(x)
            got = supernet.extract(arch).eval()(x)
        assert got.shape == (1, 10)
        worst = max(worst, (expected - got).abs().max().item())
    assert worst <= 1e-5


def test_extracted_subnet_owns_its_weights(supernet) -> None:
    arch = supernet.space.sample(3)
    sub = supernet.extract(arch)
    before = [p.clone() for p in supernet.parameters()]
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, supernet.parameters()))


def test_set_active_rejects_archs_outside_the_space() -> None:
    net = build_supernet("mbv3-tiny", 3)
    with pytest.raises(ArchError, match="resolution"):
        net.set_active(SearchSpace.load("mbv3-w1.0").largest())


def test_kernel_transform_identity_is_centre_crop() -> None:
    net = build_supernet("mbv3-tiny", 3)
    block = net.stages[1][0]
    full = block.dw_conv.weight
    k5 = block.depthwise_weight(5, 8)
    k3 = block.depthwise_weight(3, 8)
    assert torch.allclose(k5, full[:8, :, 1:6, 1:6])
    assert torch.allclose(k3, full[:8, :, 2:5, 2:5])
    with torch.no_grad():
        block.kernel_transforms["7to5"].mul_(2.0)
    assert torch.allclose(block.depthwise_weight(5, 8), 2 * full[:8, :, 1:6, 1:6])
    # 3x3 goes through both matrices: centre of the transformed 5x5, then 5to3
    assert torch.allclose(block.depthwise_weight(3, 8), 2 * full[:8, :, 2:5, 2:5])


def test_kernel_matrices_get_gradients_only_when_used() -> None:
    net = build_supernet("mbv3-tiny", 3).train()
    space = net.space
    arch = space.parse("r32-" + "-".join(["3434"] * 5))
    net.set_active(arch)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    block = net.stages[0][0]
    assert block.kernel_transforms["5to3"].grad is not None
    assert block.kernel_transforms["7to5"].grad is not None
    assert net.stages[0][3].dw_conv.weight.grad is None  # depth 2: block 4 idle


def test_elastic_bn_updates_only_active_channels() -> None:
    net = build_supernet("mbv3-tiny", 3).train()
    arch = net.space.parse("r32-" + "-".join(["3333"] * 5))
    net.set_active(arch)
    bn = net.stages[1][0].expand_bn
    mid = net.stages[1][0].active_mid
    before = bn.running_mean.clone()
    net(torch.randn(4, 3, 32, 32))
    assert not torch.equal(bn.running_mean[:mid], before[:mid])
    assert torch.equal(bn.running_mean[mid:], before[mid:])


def test_reorder_channels_keeps_the_full_network_and_sorts_by_importance() -> None:
    net = randomize(build_supernet("mbv3-tiny", 4), seed=5).eval()
    x = torch.randn(2, 3, 32, 32)
    largest = net.space.largest()
    with torch.no_grad():
        before = net.set_active(largest)(x)
        net.reorder_channels()
        after = net(x)
    assert torch.allclose(before, after, atol=1e-5)
    for stage in net.stages:
        for block in stage:
            importance = block.project_conv.weight.abs().sum((0, 2, 3))
            assert torch.all(importance[:-1] >= importance[1:])


def test_save_and_load_round_trip(tmp_path) -> None:
    net = randomize(build_supernet("mbv3-tiny", 3, labels=["cat", "dog", "owl"],
                                   normalization={"mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]}))
    net.eval()
    path = net.save(tmp_path / "sub" / "net.pt", meta={"note": "hi"})
    # the file is plain data: torch's safe loader reads it without any allow-listing
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "edgenas-supernet" and raw["space"]["name"] == "mbv3-tiny"
    loaded = load_supernet(path)
    assert loaded.labels == ["cat", "dog", "owl"]
    assert loaded.normalization == {"mean": [0.1, 0.2, 0.3], "std": [1.0, 2.0, 3.0]}
    assert loaded.meta == {"note": "hi"}
    arch = net.space.sample(9)
    x = torch.randn(2, 3, arch.resolution, arch.resolution)
    with torch.no_grad():
        assert torch.equal(net.set_active(arch)(x), loaded.set_active(arch)(x))
    assert not list(tmp_path.joinpath("sub").glob(".*tmp"))  # no temp file left behind


def test_corrupt_and_foreign_checkpoints_get_clear_errors(tmp_path) -> None:
    good = build_supernet("mbv3-tiny", 3).save(tmp_path / "good.pt")
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_supernet(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_supernet(garbage)

    plain = tmp_path / "plain.pt"
    torch.save({"blocks.1.conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="import-ofa"):
        load_supernet(plain)

    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil.write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(CheckpointError):
        read_torch_file(evil)

    with pytest.raises(CheckpointError, match="no such file"):
        load_supernet(tmp_path / "missing.pt")

    wrong = torch.load(good, weights_only=True)
    wrong["state_dict"].pop("classifier.bias")
    wrong["state_dict"]["stem.0.weight"] = torch.zeros(1, 1)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError) as err:
        load_supernet(tmp_path / "wrong.pt")
    assert "missing: classifier.bias" in str(err.value)
    assert "mis-shaped: stem.0.weight" in str(err.value)


def test_cumulative_bn_through_the_supernet_matches_the_extracted_subnet() -> None:
    """momentum=None (cumulative average) recalibrates the same through supernet and subnet."""
    net = randomize(build_supernet("mbv3-tiny", 3), seed=8)
    arch = net.space.sample(5)
    sub = net.extract(arch)
    batches = [torch.randn(4, 3, arch.resolution, arch.resolution) for _ in range(3)]
    for model in (net.set_active(arch), sub):
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for x in batches:
                model(x)
    net.eval()
    x = torch.randn(2, 3, arch.resolution, arch.resolution)
    with torch.no_grad():
        assert torch.allclose(net(x), sub.eval()(x), atol=1e-5)
