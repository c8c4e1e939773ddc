"""amr_sd.mathcheck: the leak filter's math-verify equivalence, bounded in time from any thread,
and required at start-up."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from amr_sd import mathcheck


def test_math_verify_runs_outside_the_main_thread_in_a_worker_process():
    # Its signal.alarm timeouts cannot run in a thread, so the check moves to a process's main
    # thread instead of being skipped.
    results = {}

    def check():
        results["latex"] = mathcheck.equal("0.5", ["\\frac{1}{2}"])
        results["other"] = mathcheck.equal("0.5", ["\\frac{1}{3}"])

    worker = threading.Thread(target=check)
    worker.start()
    worker.join()
    assert results == {"latex": True, "other": False}


def test_a_check_past_its_bound_is_stopped_and_the_next_one_still_runs(caplog):
    with pytest.raises(TimeoutError):
        mathcheck.run_bounded(time.sleep, 30, timeout_s=3)
    assert "worker was stopped" in caplog.text
    assert mathcheck.run_bounded(abs, -2) == 2  # a fresh worker


def test_math_verify_failure_falls_back_instead_of_raising(monkeypatch):
    import math_verify

    def broken(*args, **kwargs):
        raise RuntimeError("parser exploded")

    monkeypatch.setattr(math_verify, "parse", broken)
    assert not mathcheck.equal("0.5", ["\\frac{1}{2}"])


def test_no_candidates_is_not_equal():
    assert not mathcheck.equal("0.5", [])


def test_a_missing_math_verify_is_a_start_up_error_not_a_silent_pass(monkeypatch):
    from transformers import AutoTokenizer

    from amr_sd.engine.models import materialize_embedded
    from amr_sd.scoring import Scorer

    class Engine:
        tokenizer = AutoTokenizer.from_pretrained(str(materialize_embedded()))

    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes the import raise ImportError
    with pytest.raises(RuntimeError, match="the leak filter needs math-verify"):
        mathcheck.require()
    with pytest.raises(RuntimeError, match="math-verify"):
        Scorer(Engine())
    with pytest.raises(ImportError):
        mathcheck.math_equal("0.5", ["\\frac{1}{2}"])
