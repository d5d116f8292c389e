"""genre-export: the artifact plus its sidecar are enough to reproduce the test run's probabilities."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genre_lightning.cli.export import export
from genre_lightning.inference.predictor import Predictor
from genre_lightning.models.tta import resolve_tta, tta_views
from genre_lightning.training.module import GenreClassifier
from tests.helpers.configs import compose_config
from tests.helpers.optional import have_onnx_export, require

pytestmark = pytest.mark.slow  # every test uses the tiny_run fixture (a training run)
HAVE_ONNX = have_onnx_export()


@pytest.fixture(autouse=True)
def export_extra(request: pytest.FixtureRequest) -> None:
    """The ONNX cases need the export extra; the TorchScript ones run without it."""
    if getattr(request.node, "callspec", None) and request.node.callspec.params.get("fmt") == "onnx":
        require(HAVE_ONNX, 'genre-export format=onnx needs the export extra: pip install -e ".[export]"')


def best_checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["best_ckpt_path"]


def preprocess_like_a_server(paths: list[str], pre: dict) -> np.ndarray:
    """Only PIL and numpy, driven by the sidecar: resize to the input size, scale, normalise, NCHW."""
    assert pre["crop_pct"] == 1.0 and pre["crop_mode"] == "squash"  # so the pipeline is a plain resize
    _, height, width = pre["input_size"]
    interpolation = Image.Resampling[pre["interpolation"].upper()]
    batch = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((width, height), interpolation), dtype=np.float32) / 255
        batch.append(
            ((pixels - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)).transpose(2, 0, 1)
        )
    return np.stack(batch).astype(np.float32)


def run_artifact(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (name,) = [i.name for i in session.get_inputs()]
        return session.run(None, {name: images})[0]
    with pytest.warns(FutureWarning):  # torch.jit.load is deprecated in torch 2.14, and still works
        module = torch.jit.load(str(path))
    with torch.inference_mode():
        return module(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_artifact_and_sidecar_reproduce_the_test_run(tiny_run: Path, tmp_path: Path, capsys, fmt: str, suffix: str):
    checkpoint = best_checkpoint(tiny_run)
    result = export(compose_config("export", [f"ckpt_path={checkpoint}", f"format={fmt}"], tmp_path))
    printed = capsys.readouterr().out
    match = re.search(r"parity: max \|logit difference\| = (\S+) on (\d+) images \(ok: tolerance 0.0001\)", printed)
    assert match, printed
    assert float(match.group(1)) == pytest.approx(result["parity"]["max_abs_logit_diff"], rel=1e-3)
    assert float(match.group(1)) < 1e-4 and int(match.group(2)) == 16

    artifact = tmp_path / f"model{suffix}"
    sidecar = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    assert sidecar["classes"] == ["Action", "Comedy", "Horror", "Romance"] and sidecar["artifact"] == artifact.name
    assert sidecar["preprocessing"]["input_size"] == [3, 32, 32]

    tested = pd.read_csv(tiny_run / "test_predictions.csv")
    images = preprocess_like_a_server(list(tested["file_path"]), sidecar["preprocessing"])
    logits = run_artifact(artifact, fmt, images)
    assert logits.shape == (len(tested), 4)  # the whole test split in one batch: the batch axis is dynamic
    with torch.inference_mode():
        reference = GenreClassifier.from_checkpoint(checkpoint)(torch.from_numpy(images)).numpy()
    assert np.abs(logits - reference).max() < 1e-4
    # A server applies the sidecar's temperature (fitted on the validation split) as the model does.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert sidecar["temperature"] == pytest.approx(float(saved["state_dict"]["task.temperature"]))
    probabilities = torch.from_numpy(logits / sidecar["temperature"]).softmax(dim=1).numpy()
    expected = tested[[f"p_{c}" for c in sidecar["classes"]]].to_numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


VIEWS = {"scales": [1.0, 1.2], "crops": "center", "crop_zoom": 1.25}


@pytest.mark.parametrize(
    "fmt, suffix, tta", [("onnx", ".onnx", None), ("torchscript", ".pt", None), ("onnx", ".onnx", VIEWS)]
)
def test_a_flip_tta_checkpoint_exports_its_averaging(tiny_run: Path, tmp_path: Path, fmt: str, suffix: str, tta):
    """A checkpoint trained with tta_hflip (experiment=best_cpu) evaluates on each image and its
    mirror image (and, with model.tta, on its other views): the artifact must compute the same
    average, not the plain network."""
    saved = torch.load(best_checkpoint(tiny_run), map_location="cpu", weights_only=True)
    saved["hyper_parameters"]["tta_hflip"] = True
    saved["hyper_parameters"]["tta"] = tta
    checkpoint = tmp_path / "run" / "checkpoints" / "tta.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save(saved, checkpoint)
    (tmp_path / "run" / "annotations.csv").write_bytes((tiny_run / "annotations.csv").read_bytes())

    result = export(compose_config("export", [f"ckpt_path={checkpoint}", f"format={fmt}"], tmp_path))
    artifact = tmp_path / f"model{suffix}"
    sidecar = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    assert result["parity"]["passed"] and sidecar["tta_hflip"] is True
    assert sidecar["tta"] == resolve_tta(tta, True).to_dict()

    tested = pd.read_csv(tiny_run / "test_predictions.csv")
    images = preprocess_like_a_server(list(tested["file_path"]), sidecar["preprocessing"])
    logits = run_artifact(artifact, fmt, images)
    model = GenreClassifier.from_checkpoint(str(checkpoint)).eval()
    with torch.inference_mode():
        batch = torch.from_numpy(images)
        views = tta_views(batch, resolve_tta(tta, True))
        averaged = (sum(model.net(view) for view in views) / len(views)).numpy()
        assert len(views) == (6 if tta else 2)
        plain = model.net(batch).numpy()
    assert np.abs(logits - averaged).max() < 1e-4
    assert np.abs(plain - averaged).max() > 1e-3  # so the check above tells the two apart


def test_an_unknown_format_is_a_one_line_error(tiny_run: Path, tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export(compose_config("export", [f"ckpt_path={best_checkpoint(tiny_run)}", "format=tflite"], tmp_path))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: format='tflite' is not valid: expected one of ['card', 'onnx', 'torchscript']"
    )
    assert not list(tmp_path.glob("model*"))


def test_int8_export_prints_its_agreement_and_accuracy_against_float32(tiny_run: Path, tmp_path: Path, capsys):
    require(HAVE_ONNX, 'precision=int8 needs the export extra: pip install -e ".[export]"')
    checkpoint = best_checkpoint(tiny_run)
    export(compose_config("export", [f"ckpt_path={checkpoint}", "format=onnx", "precision=int8"], tmp_path))
    printed = capsys.readouterr().out
    match = re.search(
        r"int8 against float32 on (\d+) test posters: same top-1 for ([\d.]+)%; accuracy ([\d.]+)% -> ([\d.]+)%",
        printed,
    )
    assert match, printed
    sidecar = json.loads((tmp_path / "model.int8.onnx.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["artifact"] == "model.int8.onnx"
    split = pd.read_csv(tiny_run / "annotations.csv")
    assert sidecar["int8"]["calibration_images"] == min(128, int((split["split"] == "train").sum()))
    # Recomputed here: both artifacts in onnxruntime on the test posters, through the model's own transform.
    test = split[split["split"] == "test"]
    transform = Predictor.from_checkpoint(checkpoint, backend="torch").eval_transform
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in test["file_path"]]).numpy()
    logits_float = run_artifact(tmp_path / "model.onnx", "onnx", images)
    logits_int8 = run_artifact(tmp_path / "model.int8.onnx", "onnx", images)
    top_float, top_int8 = logits_float.argmax(axis=1), logits_int8.argmax(axis=1)
    classes = np.array(sidecar["classes"])
    truth = [set(labels.split("|")) for labels in test["labels"]]
    accuracy = [np.mean([c in t for c, t in zip(classes[top], truth, strict=True)]) for top in (top_float, top_int8)]
    assert int(match.group(1)) == len(test)
    assert float(match.group(2)) == pytest.approx(100 * (top_float == top_int8).mean(), abs=0.05)
    assert float(match.group(3)) == pytest.approx(100 * accuracy[0], abs=0.05)
    assert float(match.group(4)) == pytest.approx(100 * accuracy[1], abs=0.05)
    assert not np.allclose(logits_float, logits_int8)  # quantised, not a copy of the float model
