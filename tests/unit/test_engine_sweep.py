"""The sweep's confirmation round: a lucky best run is measured again before the default is judged."""

from dataclasses import asdict

from bench.speed import engine_sweep
from bench.speed.engine_sweep import FULL, Config


def result(config: Config, score: float, gen: float | None = None) -> dict:
    return {"config": asdict(config), "label": config.label, "scoring": {"tok_s": score},
            "generation": gen and {"tok_s": gen}}


def test_confirmation_alternates_and_compares_medians(monkeypatch, tmp_path):
    default = Config("vllm", "bfloat16", "0-1", 2048)
    best_score = Config("vllm", "bfloat16", "0-1", 8192, generate=False)
    best_gen = Config("vllm", "float32", "0-1", 2048)
    # (scoring, generation) of the later runs, in the order they run.
    later = iter([(2000, 340), (2100, 330), (1200, 345),
                  (2050, 350), (2000, 335), (1100, 330)])
    ran = []

    def fake_run(config, sizes, log_dir, floor_tok_s=0.0, timeout_s=600.0):
        ran.append((config.dtype, config.max_num_batched_tokens, config.generate))
        return result(config, *map(float, next(later)))

    monkeypatch.setattr(engine_sweep, "run_config", fake_run)
    # First runs: a lucky 2400 for the 8192 budget (no generation measured), 390 for float32.
    out = engine_sweep._confirm(result(default, 1900.0, 300.0),
                                [result(best_score, 2400.0), result(best_gen, 1150.0, 390.0)],
                                FULL, tmp_path)
    assert ran == [("bfloat16", 2048, True), ("bfloat16", 8192, True), ("float32", 2048, True)] * 2
    runs = out["runs_tok_s"]
    assert runs[best_score.label]["generation"] == [330.0, 335.0]  # the budget run had none
    assert runs[default.label]["scoring"] == [1900.0, 2000.0, 2050.0]
    # Scoring medians: default 2000, 8192 budget 2100 -> 0.952 (the first runs alone: 0.79).
    assert abs(out["scoring"] - 2000 / 2100) < 1e-12
    # Generation medians: default 340, 8192 budget 332.5, float32 345 -> 340 / 345.
    assert abs(out["generation"] - 340 / 345) < 1e-12
