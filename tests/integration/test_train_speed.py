"""The training-step speed work must not change results.

The fused activations are checked bit for bit against the written-out formulas, and one *training*
step through the supernet (train-mode BN, backward) is checked against the original once-for-all
code holding the same weights: logits, every gradient and the updated BN statistics must agree.
(tests/unit/test_ofa_import.py covers inference; this covers what training computes.)  Speed itself is
measured by benchmarks/train_vs_ofa.py, never asserted here.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from edgenas import Arch, import_ofa
from edgenas.space.spec import SearchSpace
from edgenas.supernets.layers import activate, h_sigmoid, h_swish
from edgenas.supernets.ofa_import import _collapse, key_map
from tests.unit.test_ofa_import import _make_ofa


def test_fused_activations_are_bit_identical_to_the_formulas() -> None:
    x = torch.cat([torch.linspace(-6, 6, 4801), torch.randn(10_000) * 4])
    assert torch.equal(h_swish(x), x * F.relu6(x + 3.0) / 6.0)
    assert torch.equal(h_sigmoid(x), F.relu6(x + 3.0) / 6.0)
    assert torch.equal(activate(x.clone(), "relu"), F.relu(x))


@pytest.fixture(scope="module")
def pair():
    ofa = _make_ofa(1.0).train()
    ours = import_ofa(ofa.state_dict(), "mbv3-w1.0").train()
    ours.dropout.p = 0.0  # OFA was built with dropout 0
    # float64: the comparison is of the mathematics; in float32, 20 train-mode BN layers at batch 4
    # amplify summation-order noise (which differs with thread count and memory format) to ~1 %.
    return ofa.double(), ours.double()


def _configs() -> list[dict[str, list[int]]]:
    rng = random.Random(5)
    return [{"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5},
            {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5},
            {"ks": [rng.choice([3, 5, 7]) for _ in range(20)],
             "e": [rng.choice([3, 4, 6]) for _ in range(20)],
             "d": [rng.choice([2, 3, 4]) for _ in range(5)]}]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_training_step_matches_the_original_code(pair, index: int) -> None:
    ofa, ours = pair
    config = _configs()[index]
    arch = Arch.from_ofa(config, 128)
    ofa.set_active_subnet(ks=config["ks"], e=config["e"], d=config["d"])
    ours.set_active(arch)
    ours.to(memory_format=torch.channels_last)  # as the trainer runs it
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(index),
                    dtype=torch.float64)
    y = torch.tensor([1, 5, 7, 900])
    for net in (ofa, ours):
        net.zero_grad(set_to_none=True)
    inp = x.contiguous(memory_format=torch.channels_last)
    got, want = ours(inp), ofa(x)
    assert (got - want).abs().max().item() <= 1e-9
    F.cross_entropy(got, y).backward()
    F.cross_entropy(want, y).backward()
    mine = dict(ours.named_parameters())
    buffers = dict(ours.named_buffers())
    compared = 0
    for name, p in ofa.named_parameters():
        own = key_map(SearchSpace.load("mbv3-w1.0")).get(_collapse(name))
        if own is None or p.grad is None:
            continue
        g = mine[own].grad
        assert g is not None, own
        scale = p.grad.abs().max().item()
        assert (g - p.grad).abs().max().item() <= 1e-9 + 1e-7 * scale, own
        compared += 1
    assert compared > 50
    for name, b in ofa.named_buffers():
        own = key_map(SearchSpace.load("mbv3-w1.0")).get(_collapse(name))
        if own is not None and name.endswith("running_mean"):
            assert (buffers[own] - b).abs().max().item() <= 1e-4, own



def test_folded_teacher_computes_the_same_function() -> None:
    from edgenas.supernets import build_supernet
    from edgenas.supernets.static import fold_batchnorm
    from tests.support.supernet_utils import randomize

    space = SearchSpace.load("mbv3-tiny")
    net = randomize(build_supernet(space, 10), seed=4)
    teacher = net.extract(space.largest()).eval()
    folded = fold_batchnorm(teacher)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = teacher(x), folded(x)
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())  # untouched
