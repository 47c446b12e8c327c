"""The run's one tiny supernet and its export cache, shared by every test that measures subnets.

A seed-0 ``mbv3-tiny`` supernet with the digits labels and normalization and random weights (latency
and peak memory do not depend on the weights): built once per run through :func:`build_once`, so two
pytest-xdist workers build it once, and read by every test that used to make its own copy of the same
network (the specialize, campaign, resume, memory-budget and search tests).

Its export cache has the layout of a campaign's (``cached_export``): a test passes it as
``--export-cache`` / ``export_cache=``, or links a workspace's ``cache/exports`` to it, and a subnet
one test exported is not exported again by the next.  Campaigns write it with an atomic rename, so two
workers may fill it at once; :meth:`Tiny.export` (a test's own exports, in the test process) takes a
lock per subnet as well, so the two never export one subnet twice.  The folder lives for the run (the
first worker's base temp folder's parent), not across runs: what a test sees does not depend on an
earlier run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cache import build_once, locked

SPACE = "mbv3-tiny"
CLASSES = 10


@dataclass(frozen=True)
class Tiny:
    ckpt: Path
    sha: str
    cache: Path  # the run's export cache (campaign layout)

    @property
    def space(self):
        from edgenas.space.spec import SearchSpace

        return SearchSpace.load(SPACE)

    def export(self, arch, precision: str = "fp32") -> Path:
        """The latency export of ``arch`` (an Arch or its string) from the shared cache, made here
        (in this process, with TensorFlow) unless a campaign or another test made it already."""
        from edgenas.measure import campaign

        arch_id = arch if isinstance(arch, str) else arch.to_string()
        final = campaign.cached_export(self.cache, self.sha, arch_id, precision)
        if campaign._valid(final) is not None:
            return final
        with locked(self.cache / ".locks" / f"{arch_id}-{precision}.lock"):
            if campaign._valid(final) is None:
                if campaign._WORKER.get("source_sha") != self.sha:
                    campaign._worker_init(str(self.ckpt), self.sha, 0)
                campaign._export_job(arch_id, precision, str(final), 16)
        return final

    def link_exports(self, home: Path) -> None:
        """Make the workspace at ``home`` export into (and reuse) the shared cache."""
        from edgenas.measure.campaign import export_cache_dir

        link = export_cache_dir(home)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.cache, target_is_directory=True)


def _build(folder: Path) -> None:
    import torch

    from edgenas import build_supernet
    from edgenas.training.data import load_data

    torch.manual_seed(0)
    data = load_data("digits", size=32)
    net = build_supernet(SPACE, CLASSES, labels=data.labels, normalization=data.normalization)
    net.save(folder / "tiny.pt", meta={"data": {"source": "digits"}})


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by the run's xdist workers (their base temp folders' parent), or this
    process's base temp folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_tiny_supernet(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from edgenas.core.files import sha256_file

    folder = build_once(run_folder(tmp_path_factory) / "tiny-supernet", _build)
    ckpt = folder / "tiny.pt"
    cache = folder / "exports"
    cache.mkdir(exist_ok=True)
    return Tiny(ckpt, sha256_file(ckpt), cache)
