"""How every benchmark runs its contenders (eager, torch.compile, Liger-Kernel, trm_fast at each level): one loop,
so a contender past the --budget-s deadline, one that fails and the memory it leaves are handled alike everywhere.
The order is each benchmark's own (its `contenders` iterable); the notes name a contender by its `what`."""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, TypeVar

import torch

from trm_fast.tools.bench.timing import on_gpu

Job = TypeVar("Job")
Result = TypeVar("Result")


def run_contenders(contenders: Iterable[tuple[str, bool, Job]], measure: Callable[[Job], Result], deadline: Deadline,
                   notes: list[str], log) -> Iterator[tuple[Job, Result]]:
    """Measures each (what, compiled, job) of `contenders` in turn and yields (job, measure(job)) for those that ran.
    One that would start after the deadline is not run, one whose measure raises is left out (both noted; a failing
    contender is never fatal), and after each its compiled graphs and freed GPU blocks are released. `contenders`
    may be a generator: it is advanced only once the previous contender's figures have been used."""
    for what, compiled, job in contenders:
        if deadline.expired():
            notes.append(f"{what} not run (the --budget-s time was used up)")
            continue
        try:
            result = measure(job)
        except Exception as exc:
            _note_skipped(notes, log, what, exc)
            continue
        finally:
            _release_contender(compiled)
        yield job, result


def _release_contender(compiled: bool) -> None:
    """After a contender: drop its compiled graphs (not needed again) and, on a GPU, the cached blocks it freed, so
    the next contender's peak memory is its own."""
    if compiled:
        torch._dynamo.reset()
    if on_gpu():
        torch.cuda.empty_cache()


def _note_skipped(notes: list[str], log, what: str, exc: Exception) -> None:
    """Records and prints that a contender failed and was left out: `what` skipped (exception type: first line)."""
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    message = f"{what} skipped ({type(exc).__name__}: {first})"
    notes.append(message)
    log("  " + message)


def selected(name: str, only: list[str] | None) -> bool:
    """Whether contender `name` passes a --contenders filter ("trm_fast" selects trm_fast-L0, -L1, ...)."""
    return not only or any(name == o or name.startswith(o + "-") for o in only)


class Deadline:
    """A wall-clock budget for one command, so a staged GPU run ends inside its slot: work that would start after
    the budget is skipped with a note rather than killed half-way."""

    def __init__(self, seconds: float | None):
        self.start = time.monotonic()
        self.seconds = seconds

    def expired(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start > self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start
