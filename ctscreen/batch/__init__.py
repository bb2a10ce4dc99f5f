"""Batch screening: analyse every study under an archive folder, on this machine or a Dask cluster.

No Qt here, and torch is imported only where a study is analysed.

* :mod:`ctscreen.batch.discover` finds the studies (one per StudyInstanceUID) and fingerprints their inputs.
* :mod:`ctscreen.batch.study` is the job: one study, full pipeline, one result folder moved into place whole.
* :mod:`ctscreen.batch.engine` runs the job over all studies (``local`` worker processes or ``dask``),
  skips finished work, and writes ``summary.csv`` / ``summary.json``.

Research use only, not for diagnosis.
"""

from ctscreen.batch.discover import Discovery, Study, discover_studies
from ctscreen.batch.engine import BatchEvent, BatchSummary, run_batch
from ctscreen.batch.study import BatchOptions, run_study

__all__ = ["BatchEvent", "BatchOptions", "BatchSummary", "Discovery", "Study", "discover_studies", "run_batch",
           "run_study"]
