"""Lightning's CSVLogger, made safe to resume into: the configs log with this one.

Lightning's CSV writer deletes ``metrics.csv`` when a run starts in a folder that has one, so a
run resumed into its own folder (``--ckpt_path last`` after a preemption) lost every row logged
before. Here the file is kept and the resumed run appends to it; steps logged both before a
crash and after the resume appear twice, and readers keep the later row (``runs.Run.metrics``).
"""

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class KeepingExperimentWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` under its header instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` (same arguments and files) that keeps the metrics of
    the run it resumes."""

    @property
    @rank_zero_experiment
    def experiment(self) -> KeepingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
