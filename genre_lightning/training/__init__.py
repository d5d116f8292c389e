"""Training and evaluation with Lightning: the LightningModule (``module``), its single- and
multi-label task objects (``tasks``, ``metrics``), checkpoint reading (``checkpoint_io``), fine-tuning
(``finetune``), the linear probe (``probe``), the frozen-feature cache (``feature_cache``), schedulers,
and callbacks: progress (``epoch_progress``), freed memory (``release_memory``), synchronised BatchNorm
(``layer_sync``); images that failed during a run (``failed_images``)."""
