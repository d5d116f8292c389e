"""The console scripts, one thin Hydra main each: compose the config, call the library, write results.
genre-train (``train``), genre-eval (``evaluate``), genre-predict (``predict``), genre-data
(``prepare_data``), genre-report (``report``), genre-export (``export``), genre-ensemble (``ensemble``);
what they share (``common``)."""
