"""Class-activation maps (``Predictor.explain``): where the model looked.

The honest test: posters whose only genre cue (a disc of the genre's colour) sits in one known
quadrant, a tiny model trained on them through genre-train, and each test poster's map of its
predicted genre peaking in the cue's quadrant far more often than the 1 in 4 of chance. Then the
properties that hold for any model: flip TTA explained symmetrically, an ensemble's map the mean of
its members' maps, and ViT-style token maps laid out on the patch grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from scipy.stats import binomtest

from genre_lightning import Predictor
from genre_lightning.inference.explain import peak, reshape_transform, target_layer
from genre_lightning.models.ensemble import EnsembleNet
from genre_lightning.models.network import build_network
from genre_lightning.models.prediction_task import make_prediction_task
from genre_lightning.utils.errors import ConfigError
from tests.helpers.cli import run_entry_point
from tests.helpers.posters import quadrant_posters

CLASSES = ["Action", "Comedy", "Horror", "Romance"]
SIDE = 64  # resnet10t's last stage is 2x2 at 64 px: one cell per quadrant


@pytest.fixture(scope="module")
def quadrant_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """The tiny model trained on quadrant posters through genre-train; (best checkpoint, cue quadrants)."""
    work = tmp_path_factory.mktemp("quadrants")
    where = quadrant_posters(work / "posters", per_genre=40, side=SIDE, seed=0)
    done = run_entry_point(
        "genre-train", "debug=tests", f"data.root={work / 'posters'}",
        f"model.data_config.input_size=[3,{SIDE},{SIDE}]", "trainer.max_epochs=8",
        "data.batch_size=16", "artifacts=none", "logger=csv", f"hydra.run.dir={work / 'run'}",
        cwd=work,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return next((work / "run" / "checkpoints").glob("epoch*.ckpt")), where


def quadrant(heatmap: np.ndarray) -> tuple[int, int]:
    row, column = peak(heatmap)
    return int(row >= heatmap.shape[0] / 2), int(column >= heatmap.shape[1] / 2)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "count"), [("gradcam", None), ("gradcam++", 8), ("scorecam", 6)])
def test_the_map_peaks_where_the_genre_cue_is(quadrant_run, method: str, count: int | None):
    ckpt, where = quadrant_run
    split = pd.read_csv(ckpt.parent.parent / "annotations.csv")
    test = list(split.loc[split["split"] == "test", "file_path"])[:count]
    predictor = Predictor.from_checkpoint(ckpt)
    explained = predictor.explain(test, method=method)
    correct = sum(e.genre == Path(e.source).parent.name for e in explained)
    hits = sum(quadrant(e.maps[e.genre]) == where[e.source] for e in explained)
    p_value = binomtest(hits, len(explained), 0.25, alternative="greater").pvalue
    rate = f"{hits} of {len(explained)} test posters ({hits / len(explained):.0%}"
    print(f"\n{method}: peak in the cue's quadrant for {rate}; chance 25%, binomial p = {p_value:.1e})")
    print(f"top-1 {correct} of {len(explained)}")
    assert correct / len(explained) >= 0.75  # the model learnt the cue: its maps mean something
    assert hits / len(explained) >= 0.7 and p_value < 0.01
    for e in explained:
        assert e.maps[e.genre].shape == (SIDE, SIDE) and e.maps[e.genre].min() == 0 and e.maps[e.genre].max() == 1


def random_predictor(backbone: str, net: torch.nn.Module | None = None, data_config=None, flip=False) -> Predictor:
    if net is None:
        net, data_config = build_network(backbone, len(CLASSES), data_config={"input_size": (3, SIDE, SIDE)})
    return Predictor(net.eval(), make_prediction_task("single", CLASSES), data_config, tta_hflip=flip)


def test_flip_tta_is_explained_symmetrically():
    """With flip TTA a mirrored poster gets the same answer as the poster; so does its map, mirrored."""
    torch.manual_seed(0)
    net, config = build_network("resnet10t", len(CLASSES), data_config={"input_size": (3, SIDE, SIDE)})
    image = torch.randn(3, SIDE, SIDE)
    plain, mirrored = random_predictor("", net, config, flip=True).explain(torch.stack([image, image.flip(-1)]), "all")
    for genre in CLASSES:
        np.testing.assert_allclose(mirrored.maps[genre], plain.maps[genre][:, ::-1], atol=1e-4)
    no_flip = random_predictor("", net, config).explain(image, genres="all")[0]
    assert any(np.abs(no_flip.maps[g] - plain.maps[g]).max() > 0.05 for g in CLASSES)  # the mirror image counts


def test_an_ensembles_map_is_the_mean_of_its_members_maps():
    torch.manual_seed(0)
    members = [{"backbone": "resnet10t", "data_config": {"input_size": [3, SIDE, SIDE]}}] * 2
    ensemble = EnsembleNet(members, len(CLASSES))
    image = torch.randn(3, SIDE, SIDE)
    both = random_predictor("", ensemble, ensemble.data_config).explain(image, genres=["Horror"])[0].maps["Horror"]
    alone = [
        random_predictor("", member.net, ensemble.data_config).explain(image, genres=["Horror"])[0].maps["Horror"]
        for member in ensemble.members
    ]
    mean = (alone[0] + alone[1]) / 2
    np.testing.assert_allclose(both, (mean - mean.min()) / (mean.max() - mean.min()), atol=1e-5)
    assert np.abs(alone[0] - alone[1]).max() > 0.05  # two different members: the mean is not one of them


def test_a_vit_map_comes_from_the_last_blocks_norm1_laid_out_on_the_patch_grid():
    net = timm.create_model("vit_tiny_patch16_224", img_size=SIDE, patch_size=16, num_classes=len(CLASSES))
    assert target_layer(net) is net.blocks[-1].norm1
    tokens = torch.randn(2, net.num_prefix_tokens + 16, net.embed_dim)
    assert reshape_transform(net)(tokens).shape == (2, net.embed_dim, 4, 4)
    config = {"input_size": (3, SIDE, SIDE), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic",
              "crop_pct": 1.0, "crop_mode": "squash"}  # fmt: skip
    (result,) = random_predictor("", net, config).explain(torch.randn(3, SIDE, SIDE))
    heatmap = result.maps[result.genre]
    assert heatmap.shape == (SIDE, SIDE) and heatmap.std() > 0.01  # varies over the image


def test_a_cnn_uses_its_last_feature_stage_and_bad_choices_are_one_line_errors():
    predictor = random_predictor("resnet10t")
    assert target_layer(predictor.network) is predictor.network.layer4
    with pytest.raises(ConfigError, match=r"explain_method='lime' is not valid: expected one of"):
        predictor.explain(torch.randn(3, SIDE, SIDE), method="lime")
    with pytest.raises(ConfigError, match=r"genres='Western' is not valid"):
        predictor.explain(torch.randn(3, SIDE, SIDE), genres="Western")


def test_an_unreadable_file_gets_an_error_not_an_exception(tmp_path: Path):
    broken = tmp_path / "page.jpg"
    broken.write_text("<html>Access denied</html>")
    (result,) = random_predictor("resnet10t").explain([broken])
    assert result.error.startswith("not an image") and result.maps == {} and result.genre is None
