"""math-verify equivalence, bounded in time from any thread.

math-verify bounds sympy (which can hang on inputs like 10^{10^{10}}) with signal.alarm, which
works only in a process's main thread. The scorer runs the leak filter in worker threads so the
event loop keeps answering; there the check runs in a one-process pool instead, where it is that
process's main thread, with a second bound on the whole call. A call past that bound kills the
worker (a new one starts on the next call) and counts as "not equal", with a warning: the check
is never skipped silently.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import threading

log = logging.getLogger("amr_sd.mathcheck")

# math-verify's own timeouts are 1 s per parse/verify; this bounds a whole call, start-up of a
# fresh worker (importing sympy, ~2 s) included.
CALL_TIMEOUT_S = 20.0

_lock = threading.Lock()
_pool: concurrent.futures.ProcessPoolExecutor | None = None


def _get_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            # spawn: never fork a process that holds vLLM's threads and sockets.
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _discard(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.kill()  # a hung sympy never returns on its own
    pool.shutdown(wait=False, cancel_futures=True)


def run_bounded(fn, *args, timeout_s: float = CALL_TIMEOUT_S):
    """fn(*args) in the worker process; raises TimeoutError past `timeout_s` (worker killed)."""
    pool = _get_pool()
    future = pool.submit(fn, *args)
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        log.warning("math-verify took over %.0f s; its worker was stopped and the check counts as "
                    "'not equal'", timeout_s)
        _discard(pool)
        raise TimeoutError from None
    except concurrent.futures.process.BrokenProcessPool:
        _discard(pool)
        raise


def equal_in_worker(answer: str, candidates: list[str]) -> bool:
    from amr_sd.algo.reflection import math_equal

    try:
        return run_bounded(math_equal, answer, list(candidates))
    except (TimeoutError, concurrent.futures.process.BrokenProcessPool):
        return False


def close() -> None:
    """Stop the worker cleanly; a killed one leaves semaphores for the resource tracker to report."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
