"""The sweep's confirmation round: a lucky best run is measured again before the default is judged."""

from dataclasses import asdict

from bench import engine_sweep
from bench.engine_sweep import FULL, Config


def result(config: Config, tok_s: float) -> dict:
    return {"config": asdict(config), "label": config.label, "scoring": {"tok_s": tok_s}}


def test_confirmation_alternates_and_compares_medians(monkeypatch, tmp_path):
    default = Config("vllm", "bfloat16", "0-1", 2048)
    best = Config("vllm", "bfloat16", "0-1", 8192)
    # Later runs: default 2000, best 2100, default 2050, best 2000 (its first run was a lucky 2400).
    later = iter([2000.0, 2100.0, 2050.0, 2000.0])
    ran = []

    def fake_run(config, sizes, log_dir, floor_tok_s=0.0, timeout_s=600.0):
        ran.append((config.max_num_batched_tokens, config.generate))
        return result(config, next(later))

    monkeypatch.setattr(engine_sweep, "run_config", fake_run)
    out = engine_sweep._confirm(result(default, 1900.0), result(best, 2400.0), FULL, tmp_path)
    assert ran == [(2048, False), (8192, False)] * engine_sweep.CONFIRM_ROUNDS
    assert out["runs_tok_s"] == {"default": [1900.0, 2000.0, 2050.0], "best": [2400.0, 2100.0, 2000.0]}
    # Medians 2000 and 2100: 0.952, where the first runs alone said 1900 / 2400 = 0.79.
    assert abs(out["default_vs_best"] - 2000 / 2100) < 1e-12
