"""The ground floor, used by every layer above: one-line user errors (``errors``), CSV files that keep
any file name (``csvio``), plain values for checkpoints and JSON (``plain_values``), progress lines
for long phases outside training (``progress``), and the collectives of distributed runs (``distributed``)."""
