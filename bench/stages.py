"""Where a job's time goes: a stack whose workers time their stages, and the summary table."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.profiled_worker import JOB_STAGE, LOOP_LAG_STAGE, PROFILE_DIR_VARIABLE
from bench.stats import percentile
from pixpipe.dev.stack import Stack

_WORKER_MODULE = "pixpipe_services.worker.main"
_PROFILED_WORKER_MODULE = "bench.profiled_worker"


@dataclass
class ProfiledStack(Stack):
    """The usual stack, but its workers are ``bench.profiled_worker``."""

    profile_dir: Path | None = None

    def start(self) -> None:
        assert self.profile_dir is not None
        self.environment = {**self.environment, PROFILE_DIR_VARIABLE: str(self.profile_dir)}
        super().start()

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> None:
        super()._spawn(name, _PROFILED_WORKER_MODULE if module == _WORKER_MODULE else module,
                       env)

    def worker_processes(self) -> dict[str, subprocess.Popen[bytes]]:
        return {name: process for name, process in self.processes.items()
                if name.startswith("worker-")}

    def collect(self, timeout: float = 10.0) -> dict[str, list[float]]:
        """Every worker's timings since the last collection, merged by stage."""
        assert self.profile_dir is not None
        workers = self.worker_processes()
        for stale in self.profile_dir.glob("*.json"):
            stale.unlink()
        for process in workers.values():
            os.kill(process.pid, signal.SIGUSR1)
        expected = [self.profile_dir / f"{process.pid}.json" for process in workers.values()]
        deadline = time.monotonic() + timeout
        while not all(path.exists() for path in expected):
            if time.monotonic() > deadline:
                raise TimeoutError("profiled workers did not write their timings")
            time.sleep(0.02)
        merged: defaultdict[str, list[float]] = defaultdict(list)
        for path in expected:
            for stage, values in json.loads(path.read_text()).items():
                merged[stage].extend(values)
        return dict(merged)


def print_stages(console: Console, timings: dict[str, list[float]], wall_seconds: float, *,
                 capacity: int) -> None:
    """Calls, mean and p95 wall time per stage, and its share of all job time."""
    job_total = sum(timings.get(JOB_STAGE, [])) or 1.0
    table = Table(title="where a job's wall time goes (all workers, measured runs only)",
                  title_justify="left")
    for column in ("stage", "calls", "mean ms", "p95 ms", "total s", "% of job time"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in sorted(timings, key=lambda name: (name.startswith(("sql", "event")),
                                                   -sum(timings[name]))):
        values = timings[stage]
        if stage.endswith("(count)"):
            table.add_row(stage, str(len(values)), "", "", "", "")
            continue
        share = "" if stage == LOOP_LAG_STAGE else f"{100 * sum(values) / job_total:.0f}"
        table.add_row(stage, str(len(values)), f"{1000 * statistics.fmean(values):.1f}",
                      f"{1000 * percentile(values, 0.95):.1f}", f"{sum(values):.2f}", share)
    console.print(table)
    jobs = len(timings.get(JOB_STAGE, []))
    if jobs and wall_seconds:
        console.print(f"jobs in flight on average: {job_total / wall_seconds:.1f} of "
                      f"{capacity} (Little's law); SQL rows are parts of the repository rows")
