"""The flat data.* keys sorted into IntakeSettings and LoaderSettings, as instantiate(cfg.data) passes them."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from genre_lightning.data.folds import CrossValidation
from genre_lightning.data.settings import data_settings
from genre_lightning.utils.errors import ConfigError
from tests.helpers.configs import compose_config

GENRES = ["Action", "Comedy", "Horror", "Romance"]


def test_the_posters_config_keys_each_land_in_one_record(tmp_path: Path):
    cfg = compose_config("train", [f"data.root={tmp_path}", "data.folds=5", "data.fold=2"], tmp_path)
    keys = OmegaConf.to_container(cfg.data, resolve=True)
    for not_a_setting in ("_target_", "output_dir"):  # Hydra's, and the data module's own argument
        keys.pop(not_a_setting)
    intake, loading = data_settings(keys.pop("classes"), keys)
    assert intake.classes == GENRES and intake.root == str(tmp_path)
    assert intake.cv == CrossValidation(folds=5, fold=2, test_fraction=0.0, val_fraction=0.15)
    assert intake.duplicates == dict(cfg.data.duplicates) and intake.fractions == dict(cfg.data.fractions)
    assert loading.batch_size == cfg.data.batch_size and loading.augment == OmegaConf.to_container(cfg.data.augment)
    # the defaults filled in where the config leaves them null
    assert loading.micro_batch_size == cfg.data.batch_size and loading.eval_batch_size == cfg.data.eval_batch_size
    assert loading.persistent_workers is False  # asked for, but no worker process to keep (num_workers=0)


def test_verify_threads_is_read_as_verify_workers_as_02_configs_wrote_it(tmp_path: Path):
    intake, _ = data_settings(GENRES, {"root": str(tmp_path), "verify_threads": 3})
    assert intake.verify_workers == 3
    intake, _ = data_settings(GENRES, {"root": str(tmp_path), "verify_threads": 3, "verify_workers": 2})
    assert intake.verify_workers == 2


def test_a_key_of_neither_record_is_one_line_naming_it(tmp_path: Path):
    with pytest.raises(ConfigError) as error:
        data_settings(GENRES, {"root": str(tmp_path), "batchsize": 8})
    message = str(error.value)
    assert message.startswith("data.batchsize=8 is not valid: expected one of the data keys [")
    assert "'batch_size'" in message and "'folds'" in message and "\n" not in message
