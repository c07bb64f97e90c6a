"""A resumable job runner: jobs with dependencies, ``workers`` at a time, each done once.

A job is a Python callable (typically launching one subprocess) with a ``done`` marker file. On a
run, jobs whose marker exists are skipped; the others start, in list order, as soon as every job
they depend on has finished, at most ``workers`` at a time (threads; the work happens in the
subprocesses). A job that raises is logged and counted; the jobs that depend on it are skipped,
the others go on. Markers are written only after success, so re-running after an interruption
redoes exactly the unfinished jobs (which may themselves resume from their checkpoints).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Job:
    name: str
    action: Callable[[], None]
    done: Path  # marker written after success
    deps: list[str] = field(default_factory=list)


_LOG_LOCK = threading.Lock()


def log(msg: str, logfile: Path | None) -> None:
    """``HH:MM:SS msg`` to stdout and appended to ``logfile``."""
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    with _LOG_LOCK:
        print(line, flush=True)
        if logfile is not None:
            with open(logfile, "a") as f:
                f.write(line + "\n")


def run_jobs(jobs: list[Job], workers: int = 2, logfile: Path | None = None) -> int:
    """Run the unfinished ``jobs`` (see the module docstring); returns how many failed or were skipped
    because a dependency failed. A dependency naming no job in the list counts as done."""
    state = {j.name: ("done" if j.done.exists() else "todo") for j in jobs}
    cv = threading.Condition()
    failures = 0

    def next_job() -> Job | None:  # called with cv held
        nonlocal failures
        while True:
            todo = [j for j in jobs if state[j.name] == "todo"]
            if not todo:
                return None
            for j in todo:
                if any(state.get(d) == "failed" for d in j.deps):
                    state[j.name] = "failed"
                    failures += 1
                    log(f"skip  {j.name}: a dependency failed", logfile)
                    break
                if all(state.get(d, "done") == "done" for d in j.deps):
                    state[j.name] = "running"
                    return j
            else:
                cv.wait()

    def worker() -> None:
        nonlocal failures
        while True:
            with cv:
                j = next_job()
                cv.notify_all()
            if j is None:
                return
            t0 = time.perf_counter()
            log(f"start {j.name}", logfile)
            try:
                j.action()
                j.done.parent.mkdir(parents=True, exist_ok=True)
                j.done.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {time.perf_counter() - t0:.0f} s\n")
                result = "done"
                log(f"done  {j.name} ({time.perf_counter() - t0:.0f} s)", logfile)
            except Exception as e:  # noqa: BLE001 -- one failed job must not stop the others
                result = "failed"
                log(f"FAIL  {j.name}: {e}", logfile)
            with cv:
                if result == "failed":
                    failures += 1
                state[j.name] = result
                cv.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(max(1, workers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return failures
