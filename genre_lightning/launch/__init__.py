"""Running many jobs: multiruns with one shared split and their DDP processes (``sweep``), and
Slurm: launcher sizes and checkpoint + requeue on the scheduler's signal (``slurm``)."""
