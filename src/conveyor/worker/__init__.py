"""Workers: lease jobs, run them, report, keep the system healthy."""

from conveyor.worker.run import run_worker
from conveyor.worker.worker import EXIT_STALLED, Worker

__all__ = ["EXIT_STALLED", "Worker", "run_worker"]
