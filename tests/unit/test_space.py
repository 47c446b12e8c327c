"""Search space and Arch: ids, JSON, OFA format, validation, sampling, analytic cost."""

from __future__ import annotations

import random

import pytest
import torch

from edgenas import Arch, ArchError, SearchSpace, SpecError, make_divisible
from edgenas.space.plan import net_plan
from edgenas.supernets import build_supernet

SPACES = ["mbv3-w1.0", "mbv3-w1.2", "mbv3-tiny"]


@pytest.fixture(scope="module", params=SPACES)
def space(request: pytest.FixtureRequest) -> SearchSpace:
    return SearchSpace.load(request.param)


def test_make_divisible_follows_mobilenet_rule() -> None:
    assert make_divisible(16 * 1.2) == 24  # 16 would lose more than 10 %
    assert make_divisible(112 * 1.2) == 136
    assert make_divisible(72 // 4) == 24
    assert make_divisible(96 // 4) == 24
    assert make_divisible(240 // 4) == 64


def test_builtin_specs_have_the_design_values() -> None:
    w10 = SearchSpace.load("mbv3-w1.0")
    assert [s.width for s in w10.stages] == [24, 40, 80, 112, 160]
    assert [s.stride for s in w10.stages] == [2, 2, 2, 1, 2]
    assert [s.se for s in w10.stages] == [False, True, False, True, True]
    assert (w10.head_expand, w10.head_feature) == (960, 1280)
    assert w10.resolutions[0] == 128 and w10.resolutions[-1] == 224 and len(w10.resolutions) == 25
    w12 = SearchSpace.load("mbv3-w1.2")
    assert [w12.first_block_width] + [s.width for s in w12.stages] == [24, 32, 48, 96, 136, 192]
    assert (w12.head_expand, w12.head_feature) == (1152, 1536)
    # 20 elastic blocks with 9 (k, e) choices and depth 2/3/4: about 2e19 subnets per resolution
    per_res = w10.size() // len(w10.resolutions)
    assert per_res == (9**2 + 9**3 + 9**4) ** 5
    assert 1e19 < per_res < 3e19


def test_ids_round_trip_for_10000_random_archs(space: SearchSpace) -> None:
    rng = random.Random(7)
    seen = set()
    for _ in range(10_000):
        arch = space.sample(rng)
        text = arch.to_string()
        assert Arch.from_string(text) == arch
        assert space.parse(text) == arch
        seen.add(text)
    assert len(seen) > 9_000  # the sampler really explores


def test_json_and_ofa_round_trips(space: SearchSpace) -> None:
    for arch in space.sample_many(200, seed=3) + [space.smallest(), space.largest()]:
        assert Arch.from_json(arch.to_json()) == arch
        import json

        assert Arch.from_json(json.dumps(arch.to_json())) == arch
        ofa = arch.to_ofa()
        assert len(ofa["ks"]) == 20 and len(ofa["e"]) == 20 and len(ofa["d"]) == 5
        assert Arch.from_ofa(ofa, arch.resolution) == arch


def test_from_ofa_ignores_inactive_slots_and_accepts_float_expands() -> None:
    config = {"ks": [3, 5, 7, 7] * 5, "e": [6.0, 4, 3, 3] * 5, "d": [2, 2, 3, 4, 2]}
    arch = Arch.from_ofa(config, 160)
    assert arch.depths == (2, 2, 3, 4, 2)
    assert arch.blocks[0] == ((3, 6), (5, 4))
    other = dict(config, ks=[3, 5, 3, 3] * 5)  # differs only in slots a depth-2 stage skips
    other["d"] = [2, 2, 2, 2, 2]
    config2 = dict(config, d=[2, 2, 2, 2, 2])
    assert Arch.from_ofa(other, 160) == Arch.from_ofa(config2, 160)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("r32-3436-3436-3436-3436", "id"),
        ("x32-3436-3436-3436-3436-3436", "resolution"),
        ("r32-343-3436-3436-3436-3436", "stage 1"),
        ("r32-3436-34a6-3436-3436-3436", "stage 2"),
        ("r32-3436-3436-3436-3436-", "stage 5"),
    ],
)
def test_malformed_ids_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ArchError) as err:
        Arch.from_string(text)
    assert err.value.field == field
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("r33-3436-3436-3436-3436-3436", "resolution"),
        ("r32-3436-3936-3436-3436-3436", "stage 2 block 1 expand"),
        ("r32-3436-3436-3446-3436-3436", "stage 3 block 2 kernel"),
        ("r32-34-3436-3436-3436-3436", "stage 1 depth"),
        ("r32-3436-3436-3436-3436-3436343434", "stage 5 depth"),
    ],
)
def test_out_of_space_values_name_the_field(text: str, field: str) -> None:
    space = SearchSpace.load("mbv3-tiny")
    with pytest.raises(ArchError) as err:
        space.parse(text)
    assert err.value.field == field


def test_bad_spec_and_unknown_space_are_clear(tmp_path) -> None:
    with pytest.raises(SpecError, match="unknown search space 'nope'"):
        SearchSpace.load("nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "stages": []}')
    with pytest.raises(SpecError, match="stages"):
        SearchSpace.load(bad)


def test_sampling_is_seeded_and_operators_stay_in_space(space: SearchSpace) -> None:
    assert space.sample_many(20, seed=1) == space.sample_many(20, seed=1)
    assert space.sample_many(20, seed=1) != space.sample_many(20, seed=2)
    rng = random.Random(0)
    a, b = space.sample(rng), space.sample(rng)
    assert space.mutate(a, rng, prob=0.0) == a
    mutated = [space.mutate(a, rng, prob=0.5) for _ in range(50)]
    assert sum(m != a for m in mutated) > 40
    for _ in range(50):
        child = space.crossover(a, b, rng)
        space.validate(child)
        assert child.resolution in (a.resolution, b.resolution)
        for s, stage in enumerate(child.blocks):
            assert len(stage) in (len(a.blocks[s]), len(b.blocks[s]))


def test_smallest_and_largest_bound_the_cost(space: SearchSpace) -> None:
    small, large = space.smallest(), space.largest()
    assert small.depths == (2,) * 5 and set(small.kernels) == {3} and set(small.expands) == {3}
    assert large.depths == (4,) * 5 and set(large.kernels) == {7} and set(large.expands) == {6}
    for arch in space.sample_many(30, seed=5):
        assert space.macs(small) <= space.macs(arch) <= space.macs(large)
        assert space.params(small) <= space.params(arch) <= space.params(large)


def _counted_macs(model: torch.nn.Module, resolution: int) -> int:
    total = 0

    def conv_hook(module: torch.nn.Conv2d, _inp, out) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += out[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: torch.nn.Linear, _inp, _out) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", SPACES)
def test_analytic_macs_and_params_equal_the_counted_ones(name: str) -> None:
    space = SearchSpace.load(name)
    net = build_supernet(space, num_classes=17)
    archs = [space.smallest(), space.largest()] + space.sample_many(48, seed=11)
    if name != "mbv3-tiny":
        archs = archs[:12]  # ImageNet-size forwards are slower; the tiny space covers 50
    for arch in archs:
        model = net.extract(arch)
        assert sum(p.numel() for p in model.parameters()) == space.params(arch, 17)
        assert _counted_macs(model, arch.resolution) == space.macs(arch, 17), arch
        plan = net_plan(space, arch)
        assert len(plan.blocks) == 1 + sum(arch.depths)
