"""Workers: lease jobs, run them, report, keep the system healthy."""

from conveyor.worker.worker import EXIT_STALLED, Worker, run_worker

__all__ = ["EXIT_STALLED", "Worker", "run_worker"]
