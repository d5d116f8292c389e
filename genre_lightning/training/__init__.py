"""Training and evaluation with Lightning: the LightningModule (``module``, its epoch logging in
``epoch_metrics``), its single- and multi-label task objects (``tasks``: loss, metrics and tuning on top
of ``models.prediction_task``; ``losses`` for uneven genres, ``multilabel`` thresholds and Mixup,
``metrics``, and the temperature fit of ``calibration``), fine-tuning (``finetune``), the linear probe
(``probe``), the frozen-feature cache (``feature_cache``, its stores in ``feature_store``), provenance
(``provenance``), schedulers, an ensemble checkpoint
built from trained ones (``ensemble``, behind genre-ensemble), and callbacks: progress
(``epoch_progress``), freed memory (``release_memory``), synchronised BatchNorm (``layer_sync``);
images that failed during a run (``failed_images``)."""
