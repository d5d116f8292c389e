"""What the tests share besides fixtures (those are in tests/conftest.py): running the commands
(``cli``), composing configs (``configs``), optional plugins (``optional``), generated poster folders
(``posters``, ``fault_corpus``), and the scripts some tests start (``ddp_worker``, ``slurm_pause``)."""
