"""The directory where `exchange serve`'s workers keep their metrics.

prometheus_client's multiprocess mode: each worker process writes its counters to
memory-mapped files in PROMETHEUS_MULTIPROC_DIR, and /metrics adds them up. The
variable must be set before a worker imports prometheus_client, and the directory must
start empty (old files would add a previous run's counts). So `exchange serve` prepares
it before uvicorn starts the workers, which inherit the environment.

This module does not import prometheus_client: the serving process must not pick its
mode before the variable is set (with one worker, uvicorn serves in this process).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# The files prometheus_client writes; nothing else in a given directory is touched.
METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


@contextmanager
def metrics_directory() -> Iterator[str]:
    """PROMETHEUS_MULTIPROC_DIR emptied of old metric files, or a temporary directory
    (removed on exit) when it is unset."""
    given = os.environ.get(VARIABLE)
    if given:
        os.makedirs(given, exist_ok=True)
        for pattern in METRIC_FILES:
            for path in glob.glob(os.path.join(given, pattern)):
                os.remove(path)
        yield given
        return
    directory = tempfile.mkdtemp(prefix="exchange-metrics-")
    os.environ[VARIABLE] = directory
    try:
        yield directory
    finally:
        os.environ.pop(VARIABLE, None)
        shutil.rmtree(directory, ignore_errors=True)
