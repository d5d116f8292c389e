"""genre-lightning's Hydra sweeper: the cross-validated search (genre_lightning/launch/search.py).

Hydra finds sweepers only in the ``hydra_plugins`` namespace package; this module stays light (Hydra
imports it at every start) and loads the search when a sweep begins."""
