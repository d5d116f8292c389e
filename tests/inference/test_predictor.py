"""The Python API (a notebook, a service): ``Predictor.from_checkpoint(path).predict(...)``.

Every input form must give the probabilities that the run itself wrote for its test images
(``test_predictions.csv``, computed by ``trainer.test`` through the data module's eval transform).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genre_lightning import GenreClassifier, GenrePrediction, Predictor
from genre_lightning.utils.errors import ConfigError
from tests.helpers.configs import TEST_BACKBONE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_run: Path) -> tuple[Predictor, pd.DataFrame]:
    ckpt = json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"]
    return Predictor.from_checkpoint(ckpt), pd.read_csv(tiny_run / "test_predictions.csv").head(6)


def probabilities_of(results: list[GenrePrediction], classes: list[str]) -> np.ndarray:
    return np.array([[r.probabilities[c] for c in classes] for r in results])


def test_file_paths_give_the_test_runs_probabilities_and_a_sorted_top_k(trained):
    model, expected = trained
    results = model.predict(list(expected["file_path"]), top_k=2)
    assert [r.source for r in results] == list(expected["file_path"])
    np.testing.assert_allclose(
        probabilities_of(results, model.classes), expected[[f"p_{c}" for c in model.classes]], atol=1e-5
    )
    for result, top1 in zip(results, expected["top1"], strict=True):
        assert result.genre == top1 and result.error is None
        assert len(result.top_k) == 2 and result.top_k[0][1] >= result.top_k[1][1]
        assert result.top_k[0] == (top1, pytest.approx(max(result.probabilities.values())))
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_pil_images_uint8_tensors_and_preprocessed_batches_agree_with_the_files(trained):
    model, expected = trained
    paths = list(expected["file_path"])
    from_files = probabilities_of(model.predict(paths), model.classes)
    images = [Image.open(p).convert("RGB") for p in paths]
    from_pil = probabilities_of(model.predict(images), model.classes)
    # One (3, H, W) uint8 tensor of raw pixels, and a batch of them (same size: they are resized alike).
    pixels = torch.from_numpy(np.array(images[0])).permute(2, 0, 1).contiguous()
    from_one_tensor = probabilities_of(model.predict(pixels), model.classes)
    batch = torch.stack([model.eval_transform(image) for image in images])
    from_batch = probabilities_of(model.predict(batch), model.classes)
    np.testing.assert_allclose(from_pil, from_files, atol=1e-5)
    np.testing.assert_allclose(from_one_tensor, from_files[:1], atol=1e-5)
    np.testing.assert_allclose(from_batch, from_files, atol=1e-5)


def test_an_unreadable_file_gives_an_error_result_and_a_bad_tensor_a_one_line_error(trained, tmp_path: Path):
    model, expected = trained
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"<html>not a poster</html>")
    good, bad = model.predict([expected["file_path"][0], broken])
    assert good.error is None and good.genre in model.classes
    assert bad.source == str(broken) and bad.error and bad.genre is None and bad.probabilities == {}
    with pytest.raises(ConfigError, match=r"images.*\(N, 3, H, W\)"):
        model.predict(torch.zeros(2, 3))


def test_predicting_from_python_loads_no_training_library(trained, tiny_run: Path):
    # A fresh process, as a user's script: load, predict, and list what got imported on the way.
    _, expected = trained
    ckpt = json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"]
    code = (
        "import json, sys\n"
        "from genre_lightning import Predictor\n"
        f"result = Predictor.from_checkpoint({ckpt!r}, backend='torch').predict([{expected['file_path'][0]!r}])[0]\n"
        "print(json.dumps([result.genre, sorted({m.split('.')[0] for m in sys.modules})]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    genre, modules = json.loads(out.splitlines()[-1])
    assert genre == expected["top1"][0]
    for training_only in ("lightning", "torchmetrics", "scipy", "hydra", "rich"):
        assert training_only not in modules, training_only


def test_the_predictor_reports_the_checkpoint_it_runs(tiny_run: Path):
    ckpt = Path(json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"])
    identity = Predictor.from_checkpoint(ckpt).identity
    assert identity["checkpoint"] == str(ckpt.resolve()) and identity["backbone"] == TEST_BACKBONE
    assert identity["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]


def test_the_0_2_api_still_predicts_the_same_with_a_deprecation_warning(trained, tiny_run: Path):
    predictor, expected = trained
    ckpt = json.loads((tiny_run / "metrics.json").read_text())["best_ckpt_path"]
    model = GenreClassifier.from_checkpoint(ckpt)
    with pytest.warns(FutureWarning, match="Predictor.from_checkpoint"):
        old = model.predict(list(expected["file_path"]), top_k=2)
    new = predictor.predict(list(expected["file_path"]), top_k=2)
    np.testing.assert_allclose(probabilities_of(old, model.classes), probabilities_of(new, model.classes), atol=1e-6)
