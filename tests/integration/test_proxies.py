"""Zero-cost proxies, the early-stopping estimate and ``edgenas proxies`` on the small mbv3-tiny
space with the embedded digits data (real subnets, real gradients, real BN recalibration)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from edgenas import SearchSpace
from edgenas.cli import proxies as cli_proxies
from edgenas.predictors.proxies import (
    BASELINE,
    PROXIES,
    WEIGHTS,
    ProxyError,
    SubnetProxies,
    check_names,
    init_subnet,
    proxy_study,
)
from edgenas.supernets.checkpoint import make_checkpoint, save_checkpoint
from edgenas.supernets.mbv3 import build_supernet
from edgenas.training.data import load_data
from tests.support.cli_runner import Cli
from tests.support.supernet_utils import randomize

SPACE = SearchSpace.load("mbv3-tiny")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Minibatches of 4-8 tiny images: one thread is faster, and on a shared machine far faster
    (OpenMP workers spin-wait for a core), so the tests stay quick."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    data = load_data("digits", 32, limit=96)
    data.val_x, data.val_y = data.val_x[:64], data.val_y[:64]  # a quick top-1, still real
    return data


def test_cli_lists_the_library_names() -> None:
    assert cli_proxies.PROXIES == PROXIES
    assert cli_proxies.BASELINE == BASELINE and cli_proxies.WEIGHTS == WEIGHTS


def test_proxies_are_finite_deterministic_and_order_free(data) -> None:
    a, b = SPACE.smallest(), SPACE.largest()
    one = SubnetProxies(SPACE, 10, data, batch=4)
    first = one.scores(a)
    one.scores(b, ["snip"])
    again = SubnetProxies(SPACE, 10, data, batch=4)
    again.scores(b, ["naswot"])
    cheap = ["naswot", "grad_norm"]  # same arch, same score, whatever was scored before it
    assert again.scores(a, cheap) == {k: first[k] for k in cheap}
    assert set(first) == set(PROXIES)
    assert all(math.isfinite(v) for v in first.values())
    # more and wider layers carry more synaptic flow, and a wider net tells more images apart
    big = one.scores(b, ["synflow", BASELINE])
    assert big["synflow"] > first["synflow"] and big[BASELINE] > SPACE.macs(a, 10)


def test_synflow_is_data_free_and_scoring_leaves_the_model_alone(data) -> None:
    arch = SPACE.sample(3)
    model = init_subnet(SPACE, arch, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p1 = SubnetProxies(SPACE, 10, data, batch=8, seed=0)
    p2 = SubnetProxies(SPACE, 10, data, batch=4, seed=5)
    p2._last = (arch, model)
    p1._last = (arch, model)
    assert p1.scores(arch, ["synflow"]) == p2.scores(arch, ["synflow"])  # no images used
    p1.scores(arch, ["snip", "jacob_cov"])  # every proxy works on a copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_names_and_settings_are_refused(data) -> None:
    with pytest.raises(ProxyError, match="unknown proxy 'zen'"):
        check_names(["synflow", "zen"])
    with pytest.raises(ProxyError, match="inherited weights need a supernet"):
        SubnetProxies(SPACE, 10, data, weights="inherited")
    with pytest.raises(ProxyError, match="weights must be one of"):
        SubnetProxies(SPACE, 10, data, weights="trained")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data) -> Path:
    net = randomize(build_supernet(SPACE, 10), seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(make_checkpoint(net, {"data": "digits"}), path)
    return path


def test_study_correlates_with_recalibrated_top1_and_times_everything(ckpt, data) -> None:
    from edgenas.supernets.mbv3 import load_supernet

    net = load_supernet(ckpt)
    data.normalization = dict(net.normalization)
    proxies = SubnetProxies(SPACE, 10, data, net=net, weights="inherited", batch=8)
    archs = [SPACE.smallest(), SPACE.sample(4), SPACE.sample(5)]
    study = proxy_study(proxies, archs, ["naswot", BASELINE], finetune_steps=1)
    assert study.top1 is not None and all(0.0 <= t <= 1.0 for t in study.top1)
    assert set(study.scores) == {"naswot", BASELINE, "finetune@1"}
    assert all(0.0 <= t <= 1.0 for t in study.scores["finetune@1"])
    corr = study.correlations()
    assert all(-1.0 <= c["spearman"] <= 1.0 and -1.0 <= c["kendall"] <= 1.0
               for c in corr.values())
    assert study.correlations(BASELINE)[BASELINE]["spearman"] == pytest.approx(1.0)
    assert study.seconds["finetune@1"] > study.seconds[BASELINE] and study.eval_seconds > 0
    with pytest.raises(ProxyError, match="give a CKPT"):
        proxy_study(SubnetProxies(SPACE, 10, data), archs, [BASELINE], scratch_steps=1)


def test_cli_untrained_space_and_checkpoint(tmp_path, ckpt) -> None:
    cli = Cli(tmp_path / "home")
    out = cli("proxies", "--space", "mbv3-tiny", "--samples", "3", "--batch", "4",
              "--proxy", "synflow", "--limit", "64", "--json", str(tmp_path / "p.json"))
    assert "correlation with MACs" in out and "synflow" in out and "macs" in out
    saved = json.loads((tmp_path / "p.json").read_text())
    assert len(saved["archs"]) == 3 and saved["top1"] is None
    assert saved["correlations"]["macs"]["spearman"] == pytest.approx(1.0)
    out = cli("proxies", str(ckpt), "--samples", "3", "--batch", "4", "--proxy", "naswot",
              "--limit", "64")
    assert "top-1 (BN-recalibrated)" in out and "ground truth" in out
    out = cli("proxies", "--space", "mbv3-tiny", "--finetune-steps", "1", code=2)
    assert "give CKPT" in out
    assert "give either CKPT or --space" in cli("proxies", code=2)
