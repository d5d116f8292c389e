"""Every option of every config group composes, and builds the object it describes."""

import importlib.resources
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from PIL import Image

from genre_lightning.cli.common import CONFIG_MODULE, build_callbacks, build_loggers, compose_config
from genre_lightning.data.datamodule import PosterDataModule
from genre_lightning.data.dataset import build_transforms
from genre_lightning.training.finetune import GradualUnfreeze
from genre_lightning.utils.errors import ConfigError, find_user_error
from tests.helpers.configs import TEST_BACKBONE
from tests.helpers.optional import have_module, require


def options(group: str) -> list[str]:
    folder = importlib.resources.files(CONFIG_MODULE).joinpath(group)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def test_every_group_has_its_options():
    assert {"demo", "posters"} <= set(options("data"))
    assert {"resnet18", "efficientnet_b0", "tiny"} <= set(options("model"))
    assert set(options("finetune")) >= {"none", "head_then_all", "gradual"}
    assert set(options("trainer")) >= {"cpu", "gpu", "ddp", "ddp_cpu"}
    assert set(options("experiment")) >= {"demo", "seed_resnet18", "seed_efficientnet_b0"}


@pytest.mark.parametrize("option", options("data"))
def test_data_options_build_a_datamodule(option, tmp_path):
    cfg = compose_config("train", [f"data={option}", f"data.root={tmp_path}"], tmp_path)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, PosterDataModule)
    assert datamodule.classes == ["Action", "Comedy", "Horror", "Romance"]
    assert datamodule.output_dir == tmp_path


@pytest.mark.parametrize("option", [o for o in options("model") if o != "default"])
def test_model_options_build_the_named_backbone(option, tmp_path):
    cfg = compose_config("train", [f"model={option}", "model.pretrained=false"], tmp_path)
    model = instantiate(cfg.model, _recursive_=False)
    assert model.hparams.backbone == cfg.model.backbone
    assert model.net.get_classifier().out_features == 4
    assert len(model.data_config["input_size"]) == 3


@pytest.mark.parametrize("optimizer", options("model/optimizer"))
@pytest.mark.parametrize("scheduler", options("model/scheduler"))
def test_optimizer_and_scheduler_options_instantiate(optimizer, scheduler, tmp_path):
    cfg = compose_config(
        "train", ["model=tiny", f"model/optimizer={optimizer}", f"model/scheduler={scheduler}"], tmp_path
    )
    model = instantiate(cfg.model, _recursive_=False)
    configured = model.configure_optimizers()
    assert type(configured["optimizer"]).__name__.lower() == optimizer
    assert isinstance(configured["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LRScheduler)


@pytest.mark.parametrize("option", options("finetune"))
def test_finetune_options(option, tmp_path):
    cfg = compose_config("train", [f"finetune={option}"], tmp_path)
    callbacks = build_callbacks(cfg)
    finetuners = [c for c in callbacks if isinstance(c, GradualUnfreeze)]
    assert len(finetuners) == (0 if option == "none" else 1)
    if option == "head_then_all":
        assert len(finetuners[0].milestones) == 1
    if option == "gradual":
        assert len(finetuners[0].milestones) > 1 and finetuners[0].lr_decay < 1


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options(option, tmp_path):
    callbacks = build_callbacks(compose_config("train", [f"callbacks={option}", "finetune=none"], tmp_path))
    best, last = (c for c in callbacks if isinstance(c, ModelCheckpoint))
    assert best.monitor == "val/acc" and best.mode == "max" and best.save_top_k == 1
    assert last.monitor is None and last.filename == "last"  # last.ckpt after every validation
    assert Path(best.dirpath) == Path(last.dirpath) == tmp_path / "checkpoints"
    assert any(isinstance(c, LearningRateMonitor) for c in callbacks)


@pytest.mark.parametrize("option, kind", [("tensorboard", TensorBoardLogger), ("csv", CSVLogger)])
def test_logger_options(option, kind, tmp_path):
    (logger,) = build_loggers(compose_config("train", [f"logger={option}"], tmp_path))
    assert isinstance(logger, kind) and Path(logger.save_dir) == tmp_path


def test_logger_many_is_tensorboard_csv_and_mlflow_on_a_local_store_under_outputs(tmp_path):
    require(have_module("mlflow"), 'MLflow is not installed: pip install -e ".[mlflow]"')
    loggers = build_loggers(compose_config("train", ["logger=many"], tmp_path))
    assert [type(lg) for lg in loggers] == [TensorBoardLogger, CSVLogger, MLFlowLogger]
    mlflow = loggers[2]
    assert mlflow._tracking_uri == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    assert mlflow.experiment.get_experiment(mlflow.experiment_id).name == "train"
    # The run exists as soon as the logger does, and the run folder knows it (a resume continues it).
    ids = json.loads((tmp_path / "tracking.json").read_text())
    assert ids["mlflow"]["run_id"] == mlflow.run_id
    assert Path(mlflow.experiment.get_run(mlflow.run_id).info.artifact_uri).is_relative_to(tmp_path / "outputs")


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(option, tmp_path):
    cfg = compose_config("train", [f"trainer={option}"], tmp_path)
    if option in ("gpu", "ddp"):
        assert cfg.trainer.accelerator == "gpu"
        if option == "ddp":
            assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm
        return  # building a GPU trainer needs a GPU
    trainer = instantiate(cfg.trainer)
    assert trainer.world_size == (2 if option == "ddp_cpu" else 1)
    assert Path(trainer.default_root_dir) == tmp_path


@pytest.mark.parametrize("model", ["resnet18", "efficientnet_b0"])
def test_seed_experiments_reproduce_the_study_recipe(model, tmp_path):
    cfg = compose_config("train", [f"experiment=seed_{model}", f"data.root={tmp_path}"], tmp_path)
    assert cfg.model.backbone == model and cfg.model.pretrained
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert cfg.model.scheduler._target_.endswith("StepLR")
    assert (cfg.model.scheduler.step_size, cfg.model.scheduler.gamma) == (7, 0.1)
    assert list(cfg.model.data_config.input_size) == [3, 256, 256] and cfg.model.data_config.crop_pct == 1.0
    assert cfg.data.batch_size == 32 and cfg.data.augment is None and cfg.trainer.max_epochs == 20
    assert not cfg.finetune
    # With the study's settings the eval transform is a plain 256x256 resize: no crop, no flip.
    cfg.model.pretrained = False
    model_obj = instantiate(cfg.model, _recursive_=False)
    datamodule = instantiate(cfg.data)
    datamodule.set_data_config(model_obj.data_config)
    train_tf, eval_tf = build_transforms(datamodule.data_config, datamodule.augment)
    assert train_tf is eval_tf
    assert eval_tf(Image.new("RGB", (380, 562))).shape == (3, 256, 256)


def test_demo_experiment_is_offline_and_small(tmp_path):
    cfg = compose_config("train", ["experiment=demo"], tmp_path)
    assert cfg.data.demo is not None and not cfg.model.pretrained and cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.duplicates.policy=dedupe", "data.duplicates.policy='dedupe' is not valid: expected one of ['keep'"),
        ("data.duplicates.near_threshold=-1", "data.duplicates.near_threshold=-1 is not valid: expected an integer"),
        ("data.duplicates.near_threshold=six", "data.duplicates.near_threshold='six' is not valid"),
        ("data.duplicates.near_threshold=2.5", "data.duplicates.near_threshold=2.5 is not valid"),
        ("data.duplicates.near_threshold=true", "data.duplicates.near_threshold=True is not valid"),
    ],
)
@pytest.mark.parametrize("task", ["train", "prepare"])
def test_duplicate_options_are_checked_before_any_scan(task, override, expected, tmp_path):
    # data.root has no genre folders: a scan would fail on data.classes, so this error comes first.
    cfg = compose_config(task, [f"data.root={tmp_path}", override], tmp_path)
    with pytest.raises(Exception) as err:
        instantiate(cfg.data)
    user_error = find_user_error(err.value)
    assert isinstance(user_error, ConfigError) and str(user_error).startswith(expected)
    assert "\n" not in str(user_error)


def test_demo_refuses_a_folder_that_is_not_its_own_in_one_line(tmp_path):
    root = tmp_path / "my_posters"
    (root / "Action").mkdir(parents=True)
    (root / "Action" / "mine.jpg").write_bytes(b"user data")
    datamodule = instantiate(compose_config("prepare", ["data=demo", f"data.root={root}"], tmp_path).data)
    with pytest.raises(ConfigError, match=r"^data.root='.*my_posters' is not valid: expected an empty or missing"):
        datamodule.prepare_data()
    assert (root / "Action" / "mine.jpg").read_bytes() == b"user data"
    assert sorted(p.name for p in root.rglob("*")) == ["Action", "mine.jpg"]


def test_demo_fills_an_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    datamodule = instantiate(
        compose_config("prepare", ["data=demo", f"data.root={root}", "data.demo.per_class=4"], tmp_path).data
    )
    datamodule.prepare_data()
    assert len(list(root.glob("*/*.jpg"))) == 16 and (root / "demo_manifest.json").is_file()


@pytest.mark.parametrize("config_name", ["train", "eval"])
def test_debug_options_give_the_tests_settings_and_a_seconds_long_check(config_name: str, tmp_path):
    extra = ["ckpt_path=x.ckpt"] if config_name == "eval" else []
    tests = compose_config(config_name, ["debug=tests", *extra], tmp_path)
    assert tests.trainer.accelerator == "cpu" and tests.trainer.enable_progress_bar is False
    assert tests.data.num_workers == 0 and tests.print_config is False
    if config_name == "train":
        assert tests.model.backbone == TEST_BACKBONE and tests.model.pretrained is False
        assert list(tests.model.data_config.input_size) == [3, 32, 32]
        fast = compose_config("train", ["debug=fast", "experiment=best_cpu"], tmp_path)
        assert fast.model.backbone == TEST_BACKBONE  # debug comes after the experiment
        assert fast.trainer.limit_train_batches == 2 and fast.trainer.max_epochs == 2
        assert "_target_" not in fast.artifacts  # no figures
