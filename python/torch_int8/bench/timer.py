"""The timer every benchmark shares: methods timed in turns with CUDA events (or the host's clock,
for CPU work), a failing method recorded instead of stopping the benchmark.

Timing (:func:`timeit_interleaved`): ``warmup`` calls first (also used to estimate the time of one
call); then ``reps`` measurements, each one an event pair around ``batch`` back-to-back calls,
divided by ``batch``; the methods compared on one shape take turns, one measurement each per round.
``batch`` is 1 unless one call takes less than ``_MIN_EVENT_MS`` (0.1 ms); then it is enough calls (at
most 1000) to span about 0.1 ms, so that event resolution and jitter do not dominate tiny kernels.  All
events are recorded before a single synchronize, so the GPU runs the calls back to back; for
microsecond kernels the host-side launch overhead of each op can still exceed the kernel time, and
then it is what gets measured (as in eager use; CUDA-graph replays, :mod:`.graphs`, give the GPU
time).  The reported time is the median over the reps (min is kept in the JSON too).  Caches are not
flushed between calls: for shapes whose operands fit in the L2 cache (50 MB on H100/H200) the numbers
are "warm L2" numbers, for every method alike.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Callable, Dict, Tuple, Union

import torch

# A single event pair should span at least this much GPU time; faster calls are batched.
_MIN_EVENT_MS = 0.1
_MAX_BATCH = 1000

Device = Union[str, torch.device]


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit(
            "torch_int8.bench: a CUDA GPU is required (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )


def choose_batch(est_ms: float, min_ms: float = _MIN_EVENT_MS, max_batch: int = _MAX_BATCH) -> int:
    """Calls per event pair so that one measurement spans >= min_ms of GPU time."""
    if not (est_ms > 0) or math.isnan(est_ms):
        return max_batch
    return int(max(1, min(max_batch, math.ceil(min_ms / est_ms))))


class WallEvent:
    """torch.cuda.Event's timing interface on the host's clock, for CPU work (done when its call returns)."""

    def __init__(self, enable_timing: bool = True):
        self.seconds = math.nan

    def record(self) -> None:
        self.seconds = time.perf_counter()

    def elapsed_time(self, end: "WallEvent") -> float:
        return 1e3 * (end.seconds - self.seconds)


def _no_sync() -> None:
    pass


def clock(device: Device = "cuda") -> Tuple[type, Callable[[], None]]:
    """(event type, synchronize) that time work on device: CUDA events, or the host's clock for the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.Event, torch.cuda.synchronize
    return WallEvent, _no_sync


def timeit(fn: Callable[[], object], reps: int = 50, warmup: int = 10, device: Device = "cuda") -> dict:
    """Time ``fn`` (which launches CUDA work) with CUDA events: timeit_interleaved of fn alone."""
    return timeit_interleaved({"fn": fn}, reps, warmup, device)["fn"]


def timeit_interleaved(fns: Dict[str, Callable[[], object]], reps: int = 50, warmup: int = 10,
                       device: Device = "cuda") -> Dict[str, dict]:
    """Time each of ``fns`` (which launch CUDA work) with CUDA events, in turns.

    Per fn ``warmup`` untimed-in-the-result calls (one event pair around all of them gives an
    estimate of one call, and so its ``batch``); then ``reps`` rounds, each measuring ``batch``
    back-to-back calls of every fn in turn (the order rotating from round to round), divided by
    ``batch``. Taking turns exposes every fn to the same drift of the GPU's clocks (power limit,
    temperature) over the measurement, instead of favouring the fn timed first; rotating lets each
    fn follow each other one (whose operands fill the L2 cache). On the CPU (``device``) the host's
    clock stands in for the events.
    Returns per fn {"ms": median, "min_ms": min, "batch": batch, "reps": reps}. No cache flushing.
    """
    event, synchronize = clock(device)
    reps = max(1, int(reps))
    warmup = max(1, int(warmup))
    batches = {}
    for name, fn in fns.items():
        start, end = event(enable_timing=True), event(enable_timing=True)
        synchronize()
        start.record()
        for _ in range(warmup):
            fn()
        end.record()
        synchronize()
        batches[name] = choose_batch(start.elapsed_time(end) / warmup)
    events = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each follows each (caches, clocks)
            s, e = event(enable_timing=True), event(enable_timing=True)
            s.record()
            for _ in range(batches[name]):
                fns[name]()
            e.record()
            events[name].append((s, e))
    synchronize()
    out = {}
    for name, pairs in events.items():
        times = [s.elapsed_time(e) / batches[name] for s, e in pairs]
        out[name] = {"ms": statistics.median(times), "min_ms": min(times), "batch": batches[name], "reps": reps}
    return out


def error_result(label: str, exc: Exception) -> dict:
    """{"ms": None, "error": message} for a method that raised (also printed to stderr), after
    draining the GPU's queue."""
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 - e.g. a sticky CUDA error; reported below
            pass
    print(f"  {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"ms": None, "error": f"{type(exc).__name__}: {exc}"}


def time_or_error(label: str, make: Callable[[], Callable[[], object]], args, device: Device = "cuda") -> dict:
    """timeit(make()) plus "error": None; if making or timing the call raises, error_result
    instead, so that one failing method (or CUDA-graph capture) does not stop the whole benchmark."""
    try:
        t = timeit(make(), args.reps, args.warmup, device)
    except Exception as exc:  # noqa: BLE001 - a failing method must not stop the whole benchmark
        return error_result(label, exc)
    t["error"] = None
    return t


def time_in_turns(label: str, fns: Dict[str, Callable[[], object]], args, device: Device = "cuda") -> Dict[str, dict]:
    """timeit_interleaved over those of fns whose first call succeeds, each result plus "error":
    None; a fn whose first call raises gets error_result and is left out of the turns. Should one
    raise later, each is timed alone (time_or_error), so that only the failing one is lost."""
    synchronize = clock(device)[1]
    out, ok = {}, {}
    for name, fn in fns.items():
        try:
            fn()
            synchronize()
            ok[name] = fn
        except Exception as exc:  # noqa: BLE001 - a failing method must not stop the whole benchmark
            out[name] = error_result(f"{label} {name}", exc)
    try:
        timed = timeit_interleaved(ok, args.reps, args.warmup, device) if ok else {}
    except Exception:  # noqa: BLE001 - one fn failed past its first call: each alone, to find which
        timed = {name: time_or_error(f"{label} {name}", lambda fn=fn: fn, args, device) for name, fn in ok.items()}
    for name, t in timed.items():
        out[name] = {**t, "error": t.get("error")}
    return {name: out[name] for name in fns}
