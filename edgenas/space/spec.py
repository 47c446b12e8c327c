"""Search space and architecture values.

A :class:`SearchSpace` is loaded from a JSON spec in ``supernets/`` (data, not code), and an
:class:`Arch` is one subnet of it.  ``Arch`` only stores the *active* blocks, so two configurations
that differ only in blocks a shallow stage skips get the same canonical id; that id is what the
measurement store, caches and manifests key on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgenas.core.errors import ArchError, SpecError
from edgenas.core.paths import spec_dir
from edgenas.space.plan import LayerPlan, count_macs, count_params, layer_plan

NUM_STAGES = 5
ACTIVATIONS = ("relu", "h_swish")


# --------------------------------------------------------------------------------------------- Arch


@dataclass(frozen=True)
class Arch:
    """One subnet: input resolution plus (kernel, expand) of every active block, per stage.

    ``blocks[s]`` is a tuple of ``(kernel, expand_ratio)`` pairs for the active blocks of stage
    ``s``; the stage depth is its length.  The canonical id is ``r<res>-<stage>-...`` where each
    stage is the concatenation of ``<kernel><expand>`` digit pairs, e.g. ``r32-3436-7656-...``.
    """

    resolution: int
    blocks: tuple[tuple[tuple[int, int], ...], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or isinstance(self.resolution, bool):
            raise ArchError("resolution", f"must be an integer, got {self.resolution!r}")
        if self.resolution <= 0:
            raise ArchError("resolution", f"must be positive, got {self.resolution}")
        if len(self.blocks) != NUM_STAGES:
            raise ArchError("depths", f"need {NUM_STAGES} stages, got {len(self.blocks)}")
        for s, stage in enumerate(self.blocks):
            if len(stage) == 0:
                raise ArchError(f"stage {s + 1}", "needs at least one block")
            for b, pair in enumerate(stage):
                if len(pair) != 2:
                    raise ArchError(f"stage {s + 1} block {b + 1}", "needs (kernel, expand)")
                for name, value in zip(("kernel", "expand"), pair):
                    if not isinstance(value, int) or not 1 <= value <= 9:
                        raise ArchError(
                            f"stage {s + 1} block {b + 1} {name}",
                            f"must be a single-digit integer, got {value!r}",
                        )

    # ---- views
    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(stage) for stage in self.blocks)

    @property
    def kernels(self) -> tuple[int, ...]:
        """Kernel size of each active block, in network order."""
        return tuple(k for stage in self.blocks for k, _ in stage)

    @property
    def expands(self) -> tuple[int, ...]:
        """Expand ratio of each active block, in network order."""
        return tuple(e for stage in self.blocks for _, e in stage)

    # ---- string id
    def to_string(self) -> str:
        stages = ("".join(f"{k}{e}" for k, e in stage) for stage in self.blocks)
        return f"r{self.resolution}-" + "-".join(stages)

    def __str__(self) -> str:
        return self.to_string()

    @classmethod
    def from_string(cls, text: str) -> Arch:
        """Parse an id made by :meth:`to_string`; errors name the part that is wrong."""
        if not isinstance(text, str):
            raise ArchError("id", f"must be a string, got {type(text).__name__}")
        parts = text.strip().split("-")
        if len(parts) != NUM_STAGES + 1:
            raise ArchError(
                "id", f"{text!r} needs 'r<res>' and {NUM_STAGES} stages separated by '-'"
            )
        head = parts[0]
        if not head.startswith("r") or not head[1:].isdigit():
            raise ArchError("resolution", f"{head!r} is not of the form r<integer>")
        stages = []
        for s, chunk in enumerate(parts[1:]):
            if not chunk or len(chunk) % 2 or not chunk.isdigit():
                raise ArchError(
                    f"stage {s + 1}", f"{chunk!r} must be pairs of digits <kernel><expand>"
                )
            stages.append(
                tuple((int(chunk[i]), int(chunk[i + 1])) for i in range(0, len(chunk), 2))
            )
        return cls(int(head[1:]), tuple(stages))

    # ---- JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.to_string(),
            "resolution": self.resolution,
            "depths": list(self.depths),
            "kernels": [list(k for k, _ in stage) for stage in self.blocks],
            "expands": [list(e for _, e in stage) for stage in self.blocks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Arch:
        """Accept the dict made by :meth:`to_json` (or its JSON text)."""
        if isinstance(data, str):
            data = json.loads(data)
        try:
            kernels, expands = data["kernels"], data["expands"]
            resolution = data["resolution"]
        except (KeyError, TypeError) as exc:
            raise ArchError("json", f"missing field {exc}") from None
        if len(kernels) != len(expands):
            raise ArchError("json", "kernels and expands have different stage counts")
        blocks = []
        for s, (ks, es) in enumerate(zip(kernels, expands)):
            if len(ks) != len(es):
                raise ArchError(f"stage {s + 1}", "kernels and expands differ in length")
            blocks.append(tuple(zip(ks, es)))
        arch = cls(resolution, tuple(blocks))
        if "depths" in data and list(data["depths"]) != list(arch.depths):
            raise ArchError("depths", f"{data['depths']} disagrees with the block lists")
        return arch

    # ---- the original once-for-all format
    @classmethod
    def from_ofa(
        cls, config: dict[str, Sequence[int]], resolution: int, max_depth: int = 4
    ) -> Arch:
        """Build from OFA's ``{"ks": [20], "e": [20], "d": [5]}`` (inactive slots ignored)."""
        try:
            ks, es, ds = list(config["ks"]), list(config["e"]), list(config["d"])
        except (KeyError, TypeError) as exc:
            raise ArchError("ofa", f"config needs ks, e and d lists (missing {exc})") from None
        if len(ds) != NUM_STAGES:
            raise ArchError("d", f"needs {NUM_STAGES} entries, got {len(ds)}")
        slots = NUM_STAGES * max_depth
        for name, values in (("ks", ks), ("e", es)):
            if len(values) != slots:
                raise ArchError(name, f"needs {slots} entries, got {len(values)}")
        blocks = []
        for s, d in enumerate(ds):
            if not isinstance(d, int) or not 1 <= d <= max_depth:
                raise ArchError(f"d[{s}]", f"must be in 1..{max_depth}, got {d!r}")
            start = s * max_depth
            blocks.append(tuple((ks[start + i], _as_int(es[start + i], f"e[{start + i}]"))
                                for i in range(d)))
        return cls(resolution, tuple(blocks))

    def to_ofa(self, max_depth: int = 4) -> dict[str, list[int]]:
        """OFA's format; inactive slots repeat the stage's last active block."""
        ks: list[int] = []
        es: list[int] = []
        for stage in self.blocks:
            padded = list(stage) + [stage[-1]] * (max_depth - len(stage))
            ks += [k for k, _ in padded]
            es += [e for _, e in padded]
        return {"ks": ks, "e": es, "d": list(self.depths)}


def _as_int(value: Any, name: str) -> int:
    """OFA configs sometimes carry expand ratios as floats (6.0); accept whole numbers only."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise ArchError(name, f"must be a whole number, got {value!r}")


# --------------------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class StageSpec:
    width: int
    stride: int
    act: str
    se: bool


@dataclass(frozen=True)
class SearchSpace:
    """A MobileNetV3 supernet family and the choices its subnets may make."""

    name: str
    stem_width: int
    stem_stride: int
    first_block_width: int
    first_block_act: str
    stages: tuple[StageSpec, ...]
    head_expand: int
    head_feature: int
    kernel_choices: tuple[int, ...]
    expand_choices: tuple[int, ...]
    depth_choices: tuple[int, ...]
    resolutions: tuple[int, ...]
    se_reduction: int = 4
    divisor: int = 8
    dropout: float = 0.1
    description: str = ""
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # ---- loading
    @classmethod
    def load(cls, name_or_path: str | Path) -> SearchSpace:
        """Load a built-in spec by name (``mbv3-w1.0``) or a JSON file by path."""
        path = Path(name_or_path)
        if not path.suffix == ".json" or not path.exists():
            builtin = spec_dir() / f"{name_or_path}.json"
            if builtin.exists():
                path = builtin
            elif not path.exists():
                raise SpecError(
                    f"unknown search space {str(name_or_path)!r}: not a file, and not one of "
                    f"{', '.join(available_spaces())}"
                )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"cannot read search space {path}: {exc}") from None
        return cls.from_spec(data)

    @classmethod
    def from_spec(cls, data: dict[str, Any]) -> SearchSpace:
        """Validate a spec dict; errors name the field."""

        def need(d: dict[str, Any], key: str, where: str) -> Any:
            if not isinstance(d, dict) or key not in d:
                raise SpecError(f"search space spec: missing {where}{key}")
            return d[key]

        stages = []
        raw_stages = need(data, "stages", "")
        if not isinstance(raw_stages, list) or len(raw_stages) != NUM_STAGES:
            raise SpecError(f"search space spec: stages must list {NUM_STAGES} stages")
        for i, st in enumerate(raw_stages):
            act = need(st, "act", f"stages[{i}].")
            if act not in ACTIVATIONS:
                raise SpecError(f"search space spec: stages[{i}].act must be one of {ACTIVATIONS}")
            stages.append(
                StageSpec(
                    int(need(st, "width", f"stages[{i}].")),
                    int(need(st, "stride", f"stages[{i}].")),
                    act,
                    bool(need(st, "se", f"stages[{i}].")),
                )
            )
        res = need(data, "resolution", "")
        resolutions = tuple(
            range(int(need(res, "min", "resolution.")), int(need(res, "max", "resolution.")) + 1,
                  int(res.get("step", 4)))
        )
        if not resolutions:
            raise SpecError("search space spec: resolution range is empty")
        stem = need(data, "stem", "")
        first = need(data, "first_block", "")
        head = need(data, "head", "")
        space = cls(
            name=str(need(data, "name", "")),
            stem_width=int(need(stem, "width", "stem.")),
            stem_stride=int(stem.get("stride", 2)),
            first_block_width=int(need(first, "width", "first_block.")),
            first_block_act=str(first.get("act", "relu")),
            stages=tuple(stages),
            head_expand=int(need(head, "expand", "head.")),
            head_feature=int(need(head, "feature", "head.")),
            kernel_choices=tuple(sorted(int(k) for k in need(data, "kernel_choices", ""))),
            expand_choices=tuple(sorted(int(e) for e in need(data, "expand_choices", ""))),
            depth_choices=tuple(sorted(int(d) for d in need(data, "depth_choices", ""))),
            resolutions=resolutions,
            se_reduction=int(data.get("se_reduction", 4)),
            divisor=int(data.get("divisor", 8)),
            dropout=float(data.get("dropout", 0.1)),
            description=str(data.get("description", "")),
            spec=dict(data),
        )
        for k in space.kernel_choices:
            if k % 2 == 0 or not 1 <= k <= 9:
                raise SpecError(f"search space spec: kernel choice {k} must be odd and < 10")
        return space

    # ---- facts
    @property
    def max_depth(self) -> int:
        return max(self.depth_choices)

    @property
    def max_kernel(self) -> int:
        return max(self.kernel_choices)

    def size(self) -> int:
        """Number of distinct subnets (resolution included)."""
        per_block = len(self.kernel_choices) * len(self.expand_choices)
        per_stage = sum(per_block**d for d in self.depth_choices)
        return len(self.resolutions) * per_stage**NUM_STAGES

    def validate(self, arch: Arch) -> Arch:
        """Raise :class:`ArchError` naming the field when ``arch`` is not in this space."""
        if arch.resolution not in self.resolutions:
            raise ArchError(
                "resolution",
                f"{arch.resolution} not in {self.name}'s range "
                f"{self.resolutions[0]}..{self.resolutions[-1]} step "
                f"{self.resolutions[1] - self.resolutions[0] if len(self.resolutions) > 1 else 0}",
            )
        for s, stage in enumerate(arch.blocks):
            if len(stage) not in self.depth_choices:
                raise ArchError(f"stage {s + 1} depth", f"{len(stage)} not in {self.depth_choices}")
            for b, (k, e) in enumerate(stage):
                if k not in self.kernel_choices:
                    raise ArchError(
                        f"stage {s + 1} block {b + 1} kernel", f"{k} not in {self.kernel_choices}"
                    )
                if e not in self.expand_choices:
                    raise ArchError(
                        f"stage {s + 1} block {b + 1} expand", f"{e} not in {self.expand_choices}"
                    )
        return arch

    def parse(self, text: str) -> Arch:
        """An id, or ``min`` / ``max``, validated against this space."""
        if text == "min":
            return self.smallest()
        if text == "max":
            return self.largest()
        return self.validate(Arch.from_string(text))

    # ---- construction
    def _uniform(self, depth: int, kernel: int, expand: int, resolution: int) -> Arch:
        stage = tuple((kernel, expand) for _ in range(depth))
        return Arch(resolution, tuple(stage for _ in range(NUM_STAGES)))

    def smallest(self) -> Arch:
        return self._uniform(
            min(self.depth_choices), min(self.kernel_choices), min(self.expand_choices),
            self.resolutions[0],
        )

    def largest(self) -> Arch:
        return self._uniform(self.max_depth, self.max_kernel, max(self.expand_choices),
                             self.resolutions[-1])

    def sample(self, rng: random.Random | int | None = None, resolution: int | None = None) -> Arch:
        """A uniformly random arch (each choice drawn independently)."""
        rng = _rng(rng)
        blocks = []
        for _ in range(NUM_STAGES):
            depth = rng.choice(self.depth_choices)
            blocks.append(tuple((rng.choice(self.kernel_choices), rng.choice(self.expand_choices))
                                for _ in range(depth)))
        res = resolution if resolution is not None else rng.choice(self.resolutions)
        return self.validate(Arch(res, tuple(blocks)))

    def sample_many(self, n: int, seed: int = 0) -> list[Arch]:
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def mutate(self, arch: Arch, rng: random.Random | int | None = None,
               prob: float = 0.1) -> Arch:
        """Re-draw each choice (resolution, depth, kernel, expand) with probability ``prob``."""
        rng = _rng(rng)
        res = rng.choice(self.resolutions) if rng.random() < prob else arch.resolution
        blocks = []
        for stage in arch.blocks:
            full = _padded(stage, self.max_depth)
            depth = rng.choice(self.depth_choices) if rng.random() < prob else len(stage)
            new = []
            for k, e in full[:depth]:
                if rng.random() < prob:
                    k = rng.choice(self.kernel_choices)
                if rng.random() < prob:
                    e = rng.choice(self.expand_choices)
                new.append((k, e))
            blocks.append(tuple(new))
        return self.validate(Arch(res, tuple(blocks)))

    def crossover(self, a: Arch, b: Arch, rng: random.Random | int | None = None) -> Arch:
        """Take each choice from one parent or the other at random."""
        rng = _rng(rng)
        res = rng.choice((a.resolution, b.resolution))
        blocks = []
        for sa, sb in zip(a.blocks, b.blocks):
            depth = rng.choice((len(sa), len(sb)))
            fa, fb = _padded(sa, self.max_depth), _padded(sb, self.max_depth)
            blocks.append(tuple(rng.choice((fa[i], fb[i])) for i in range(depth)))
        return self.validate(Arch(res, tuple(blocks)))

    # ---- cost model
    def layers(self, arch: Arch) -> list[LayerPlan]:
        return layer_plan(self, arch)

    def macs(self, arch: Arch, num_classes: int = 1000) -> int:
        """Multiply-accumulates of convolutions and the classifier (BN/activations excluded)."""
        return count_macs(self, arch, num_classes)

    def params(self, arch: Arch, num_classes: int = 1000) -> int:
        """Trainable parameters of the extracted subnet, BN affine included."""
        return count_params(self, arch, num_classes)

    def to_json(self) -> dict[str, Any]:
        return dict(self.spec)


def _padded(stage: Iterable[tuple[int, int]], depth: int) -> list[tuple[int, int]]:
    """Extend a stage to ``depth`` blocks by repeating its last block (for mutation/crossover)."""
    out = list(stage)
    return out + [out[-1]] * (depth - len(out))


def _rng(rng: random.Random | int | None) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def available_spaces() -> list[str]:
    return sorted(p.stem for p in spec_dir().glob("*.json"))

