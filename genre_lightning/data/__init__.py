"""From folders of posters to batches: decode (``imageio``), find and verify (``scan``), group copies
(``duplicates``), split (``stratify``), decide which split a run uses (``split_choice``), write
``annotations.csv`` and ``data_report.json`` (``intake``, in the format of ``annotations`` and
``data_report``; its settings: ``settings``), read images (``dataset``,
``image_cache``), and the LightningDataModule (``datamodule``). ``demo`` draws synthetic posters."""
