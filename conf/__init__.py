"""The Hydra configs of genre-lightning, installed as the ``genre_lightning.conf`` package.

The entry points find them as ``pkg://genre_lightning.conf``; add your own with
``--config-dir /path/to/your/conf`` (see docs/configuration.md, "Your own configs").
"""
