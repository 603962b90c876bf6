"""A run's folder: its resolved config, samples, metrics and checkpoints, whatever the logger.

The folder is ``<save_dir>/<name>/<version>``, the one Lightning's ModelCheckpoint puts its
``checkpoints/`` in: for CSVLogger and TensorBoardLogger their ``log_dir``
(``<save_dir>/<name>/version_<n>``), for WandbLogger ``<save_dir>/<project>/<run id>``, and
``default_root_dir`` without a logger. Two runs never share one, so two W&B runs in one
``save_dir`` (a sweep) keep their configs and pictures apart.
"""

from pathlib import Path


def run_dir(trainer) -> Path:
    """The folder of the trainer's run. A collective (rank 0 decides, the others receive its
    answer: a W&B run id exists on rank 0 only): call it on every rank."""
    path = None
    if trainer.is_global_zero:
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            path = str(Path(save_dir) / str(logger.name) / version)
        else:
            path = str(trainer.default_root_dir)
    return Path(trainer.strategy.broadcast(path))
