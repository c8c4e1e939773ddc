"""math-verify equivalence, bounded in time from any thread: the leak filter's `equal`.

The filter (amr_sd.algo.reflection) is pure and takes this check as a callable; the scorer passes
:func:`equal`. math-verify is a dependency, not an option: :func:`require` fails start-up when it
is missing, so the filter never runs without it.

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
from collections.abc import Sequence

log = logging.getLogger("amr_sd.mathcheck")

# math_verify's own timeouts (signal.alarm) bound each parse and verify.
PARSE_TIMEOUT_S = 1

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


def require() -> None:
    """Fail at start-up, naming the fix, when math-verify cannot be imported."""
    try:
        import math_verify  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("the leak filter needs math-verify (pip install 'math-verify>=0.9'); "
                           f"importing it failed: {exc}") from exc


def _as_math(text: str) -> str:
    # math_verify.parse reads "\sqrt{2}" or "x^2+1" only inside math delimiters.
    text = text.strip()
    return text if text.startswith(("$", "\\(", "\\[")) else f"${text}$"


def math_equal(answer: str, candidates: Sequence[str]) -> bool:
    """The check itself, bounded by math_verify's signal timeouts: a main thread only. A parser
    failure on odd input counts as "not equal"; a missing math-verify raises (see require)."""
    from math_verify import parse, verify

    try:
        gold = parse(_as_math(answer), parsing_timeout=PARSE_TIMEOUT_S)
        if not gold:
            return False
        for candidate in candidates:
            target = parse(_as_math(candidate), parsing_timeout=PARSE_TIMEOUT_S)
            if target and verify(gold, target, timeout_seconds=PARSE_TIMEOUT_S):
                return True
    except Exception:  # any parser failure: fall back to the text checks, never crash the filter
        return False
    return False


def equal(answer: str, candidates: Sequence[str]) -> bool:
    """math-verify equivalence of ``answer`` with any candidate, from any thread: in the main
    thread directly; elsewhere (the scorer runs the filter in worker threads) in the worker
    process, where a call past CALL_TIMEOUT_S counts as "not equal"."""
    if not candidates:
        return False
    if threading.current_thread() is threading.main_thread():
        return math_equal(answer, candidates)
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
