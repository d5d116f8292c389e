"""Where the commands' Hydra configs are, in a module of its own: ``genre-predict`` needs only this
of ``common.py``, whose Lightning imports would add seconds to its start-up."""

# The configs travel with the package: conf/ in the repository is installed as genre_lightning.conf.
CONFIG_MODULE = "genre_lightning.conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
