"""Where a trainer's run writes: its folder (the run folder that ``runs`` reads back)."""

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
