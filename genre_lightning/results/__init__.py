"""What a run reports: tables (``tables``), figures (``figures``), the callback that writes both
after testing (``callback``), the TensorBoard HPARAMS summary (``hparams``), and the table of a
whole sweep (``sweep_report``, behind ``genre-report``)."""
