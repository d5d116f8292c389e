"""What a run reports: tables (``tables``), figures (``figures``), the callback that writes both after
testing (``run_artifacts``; its poster grids: ``poster_grids``), the TensorBoard HPARAMS summary
(``hparams``), experiment trackers (``tracking``: MLflow, W&B), and the table of a whole sweep
(``sweep_report``, behind genre-report; ``mlflow_sweep`` reads one back from an MLflow server)."""
