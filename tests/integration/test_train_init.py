"""``supernet train --init``: an OFA-format state dict made by the authors' ``ofa`` package, adapted
to an image folder with other labels — the checkpoint has the new labels and a working head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgenas.cli import main
from edgenas.supernets.mbv3 import load_supernet
from tests.unit.test_ofa_import import _make_ofa

LABELS = ["cat", "dog", "eel"]


def _folder(root: Path, per_class: int = 8) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(LABELS):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (40, 40, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(root / name / f"{i}.png")


@pytest.mark.slow
def test_train_init_from_an_ofa_state_dict_gives_a_new_head(tmp_path: Path) -> None:
    ofa = _make_ofa(1.0)
    src = tmp_path / "ofa.pth"
    torch.save(ofa.state_dict(), src)
    body = {k: v.clone() for k, v in ofa.state_dict().items() if k.startswith("first_conv.conv")}
    _folder(tmp_path / "imgs")
    out = tmp_path / "adapted.pt"
    result = CliRunner().invoke(main, [
        "supernet", "train", "--init", str(src), "--space", "mbv3-w1.0",
        "--data", str(tmp_path / "imgs"), "--out", str(out), "--epochs", "0.3",
        "--batch-size", "4", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    net = load_supernet(out)
    assert net.labels == LABELS and net.num_classes == 3
    assert tuple(net.classifier.weight.shape) == (3, net.space.head_feature)
    assert net.normalization["mean"] == pytest.approx([0.485, 0.456, 0.406])  # kept from ImageNet
    assert net.meta["init"]["head"] == "replaced"
    assert net.meta["init"]["old_labels"] == 1000
    # the body started from the imported weights (one short phase moves them only a little)
    start = body["first_conv.conv.weight"]
    assert torch.nn.functional.cosine_similarity(
        net.stem[0].weight.flatten(), start.flatten(), dim=0) > 0.9
    # a working head: the extracted subnets classify an image into one of the new labels
    model = net.extract(net.space.smallest()).eval()
    logits = model(torch.randn(2, 3, 128, 128))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
