"""Importing once-for-all MobileNetV3 state dicts, checked against the original project's code.

The reference is the ``ofa`` package from PyPI (the authors' code).  Its package ``__init__`` pulls
in torchvision (for a data-loader transform) and horovod, neither of which can be installed beside
torch 2.13 here; both are replaced by empty stand-in modules *only to satisfy those imports*.  The
network code that produces the reference logits is the original, unmodified.
"""

from __future__ import annotations

import random
import sys
import types

import pytest
import torch
from click.testing import CliRunner

from edgenas import Arch, import_ofa, load_supernet
from edgenas.cli import main
from edgenas.core.errors import ImportOFAError
from tests.support.supernet_utils import randomize


def _stub_unavailable_imports() -> None:
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")

    class RandomResizedCrop:  # base class of an OFA data-loader transform, never used here
        pass

    transforms.RandomResizedCrop = RandomResizedCrop
    transforms.functional = functional
    tv.transforms = transforms
    datasets = types.ModuleType("torchvision.datasets")
    tv.datasets = datasets
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional,
                        "torchvision.datasets": datasets})


def _make_ofa(width: float) -> torch.nn.Module:
    """The authors' OFAMobileNetV3 with every weight, BN statistic and kernel matrix randomised."""
    _stub_unavailable_imports()
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    torch.manual_seed(0)
    net = OFAMobileNetV3(n_classes=1000, bn_param=(0.1, 1e-5), dropout_rate=0,
                         width_mult=width, ks_list=[3, 5, 7],
                         expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    return randomize(net, seed=3).eval()


@pytest.fixture(scope="module", params=[1.0, 1.2])
def ofa_net(request: pytest.FixtureRequest):
    return request.param, _make_ofa(request.param)


def _space(width: float) -> str:
    return f"mbv3-w{width}"


def test_imported_subnets_give_the_original_logits(ofa_net) -> None:
    width, ofa = ofa_net
    ours = import_ofa(ofa.state_dict(), _space(width))
    rng = random.Random(0)
    configs = [{"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5},
               {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5}]
    for _ in range(6):
        configs.append({"ks": [rng.choice([3, 5, 7]) for _ in range(20)],
                        "e": [rng.choice([3, 4, 6]) for _ in range(20)],
                        "d": [rng.choice([2, 3, 4]) for _ in range(5)]})
    worst = 0.0
    for i, config in enumerate(configs):
        resolution = [128, 160, 224][i % 3]
        ofa.set_active_subnet(ks=config["ks"], e=config["e"], d=config["d"])
        x = torch.randn(2, 3, resolution, resolution)
        arch = Arch.from_ofa(config, resolution)
        with torch.no_grad():
            expected = ofa(x)
            extracted = ours.extract(arch).eval()(x)
            dynamic = ours.set_active(arch)(x)
        worst = max(worst, (expected - extracted).abs().max().item(),
                    (expected - dynamic).abs().max().item())
    assert worst <= 1e-4


def test_both_key_spellings_and_wrappers_load(ofa_net) -> None:
    width, ofa = ofa_net
    state = ofa.state_dict()
    old_style = {"module." + k.replace(".conv.", ".mobile_inverted_conv.", 1)
                 if k.startswith("blocks.") else "module." + k: v for k, v in state.items()}
    a = import_ofa({"state_dict": old_style}, _space(width))
    b = import_ofa(state, _space(width))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_bad_state_dicts_list_the_offending_keys(ofa_net) -> None:
    width, ofa = ofa_net
    state = dict(ofa.state_dict())
    state.pop("blocks.3.conv.point_linear.bn.bn.running_var")
    state["blocks.99.extra.weight"] = torch.zeros(1)
    state["final_expand_layer.conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(ImportOFAError) as err:
        import_ofa(state, _space(width))
    text = str(err.value)
    assert "missing keys (1): blocks.3.conv.point_linear.bn.running_var" in text
    assert "unexpected keys (1): blocks.99.extra.weight" in text
    assert "mis-shaped keys (1): final_expand_layer.conv.weight (7, 7, 1, 1)" in text
    other = "mbv3-w1.2" if width == 1.0 else "mbv3-w1.0"
    with pytest.raises(ImportOFAError, match="mis-shaped"):
        import_ofa(ofa.state_dict(), other)


def test_cli_import_writes_a_checkpoint(tmp_path) -> None:
    ofa = _make_ofa(1.0)
    src = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": ofa.state_dict()}, src)
    out = tmp_path / "imported.pt"
    runner = CliRunner()
    result = runner.invoke(main, ["supernet", "import-ofa", str(src), "--space", "mbv3-w1.0",
                                  "--out", str(out)])
    assert result.exit_code == 0, result.output
    net = load_supernet(out)
    assert net.num_classes == 1000 and net.space.name == "mbv3-w1.0"
    arch = net.space.sample(4)
    ofa.set_active_subnet(**arch.to_ofa())
    x = torch.randn(1, 3, arch.resolution, arch.resolution)
    with torch.no_grad():
        assert (ofa(x) - net.extract(arch).eval()(x)).abs().max().item() <= 1e-4
    info = runner.invoke(main, ["supernet", "info", str(out)])
    assert info.exit_code == 0 and "1000" in info.output and "once-for-all" in info.output
