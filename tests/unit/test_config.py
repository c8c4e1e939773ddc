"""Server settings declared once: each field is an AMR_* variable, a flag with its help and default,
a row of docs/server-config.md, and what /v1/info reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from amr_sd import cli, config_flags
from amr_sd.config import SECTIONS, EngineKnobs, Limits, Settings, engine_report
from amr_sd.engine.base import EngineSettings
from amr_sd.engine.machine import CpuInfo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "groups.jsonl"
AVX2_ONLY_2_CPUS = CpuInfo("test cpu", frozenset({"avx2"}), (0, 1))

# The flags `amr-sd serve` and `amr-sd score` took before they were generated: each still works.
SERVE_FLAGS = ("--host", "--port", "--grpc-port", "--model", "--engine", "--redis-url",
               "--max-pending-sequences", "--max-pending-tokens", "--request-timeout-s",
               "--drain-timeout-s", "--policy-root", "--policy-version", "--policy-wait-s",
               "--lora-modules")
ENGINE_FLAGS = ("--dtype", "--max-model-len", "--gpu-memory-utilization", "--kv-cache-gib",
                "--cpu-threads-bind", "--enforce-eager", "--no-enforce-eager",
                "--max-num-batched-tokens", "--prefix-caching", "--no-prefix-caching",
                "--tensor-parallel-size", "--enable-lora", "--no-enable-lora", "--max-lora-rank",
                "--max-loras", "--max-cpu-loras", "--lora-target-modules")


def subparser(name: str):
    (commands,) = [a for a in cli.build_parser()._actions if a.dest == "command"]
    return commands.choices[name]


@pytest.fixture
def on_a_small_avx2_cpu(monkeypatch):
    """Help as printed on a 2-CPU machine without native bf16, whatever runs the test."""
    machine = ("CPU", EngineSettings.for_device("cpu", cpu=AVX2_ONLY_2_CPUS))
    monkeypatch.setattr(config_flags, "_this_machine", lambda: machine)


def test_every_setting_has_a_description_and_lives_in_one_section():
    fields = [name for section in SECTIONS for name in section.model_fields]
    assert sorted(fields) == sorted(Settings.model_fields)
    assert all(f.description for f in Settings.model_fields.values())


def test_every_engine_knob_is_an_engine_setting():
    assert set(EngineKnobs.model_fields) <= set(EngineSettings.__dataclass_fields__)


def test_serve_help_shows_each_flags_variable_and_default(on_a_small_avx2_cpu):
    text = " ".join(subparser("serve").format_help().split())
    assert "--max-lora-rank MAX_LORA_RANK Largest adapter rank accepted. " \
           "[AMR_MAX_LORA_RANK; default: 16]" in text
    assert "[AMR_PORT; default: 8000]" in text and "[AMR_GRPC_PORT; default: unset]" in text
    assert "[AMR_DTYPE; default on this CPU: float32]" in text
    assert "[AMR_CPU_THREADS_BIND; default on this CPU: 0-1]" in text
    for name, field in Settings.model_fields.items():
        if not config_flags.environment_only(field):
            assert f"[{config_flags.env_var(name)}; default" in text, name


def test_score_help_shows_defaults_but_no_variables(on_a_small_avx2_cpu):
    text = " ".join(subparser("score").format_help().split())
    assert "[default: smollm2-135m-instruct]" in text and "[default on this CPU: 2048]" in text
    assert "AMR_" not in text  # `amr-sd score` reads no environment variables


def test_api_keys_are_never_a_flag():
    assert "--api-keys" not in subparser("serve").format_usage()
    assert "AMR_API_KEYS` | environment only" in config_flags.server_config_markdown()


def test_every_earlier_flag_still_parses():
    serve, score = subparser("serve"), subparser("score")
    assert set(SERVE_FLAGS + ENGINE_FLAGS) <= set(serve._option_string_actions)
    assert set(ENGINE_FLAGS + ("--model", "--engine")) <= set(score._option_string_actions)


def test_flags_win_over_the_environment_which_wins_over_the_default(monkeypatch):
    monkeypatch.setenv("AMR_MAX_LORA_RANK", "32")
    monkeypatch.setenv("AMR_PORT", "9000")
    args = cli.build_parser().parse_args(["serve", "--max-lora-rank", "8", "--no-enable-lora",
                                          "--lora-target-modules", "q_proj,v_proj"])
    settings = Settings(**config_flags.given(args, Settings))
    assert (settings.max_lora_rank, settings.port, settings.host) == (8, 9000, "127.0.0.1")
    assert settings.lora_target_modules == ("q_proj", "v_proj") and settings.enable_lora is False


def test_score_checks_engine_flags_before_any_engine_starts(tmp_path, monkeypatch, capsys):
    def no_engine(*_):
        raise AssertionError("the engine must not start")

    monkeypatch.setattr(cli, "_score", no_engine)
    out = tmp_path / "scored.jsonl"
    code = cli.main(["score", "--in", str(EXAMPLES), "--out", str(out), "--step", "0",
                     "--max-model-len", "8"])
    assert code == 2 and not out.exists()
    assert "amr-sd score: max_model_len: Input should be greater than or equal to 16" in \
        capsys.readouterr().err


def test_score_engine_flags_reach_the_engine_settings():
    args = cli.build_parser().parse_args(["score", "--in", "x", "--out", "y", "--step", "0",
                                          "--engine", "hf", "--max-lora-rank", "8"])
    choice, knobs = cli._engine_flags(args)
    assert (choice.engine, choice.model) == ("hf", "smollm2-135m-instruct")
    settings = knobs.engine_settings()
    assert settings.max_lora_rank == 8 and settings.reasons["max_lora_rank"] == "set by the user"


def test_bad_values_name_the_setting():
    with pytest.raises(ValidationError, match="max_lora_rank"):
        Settings(max_lora_rank=0)
    with pytest.raises(ValidationError, match="port"):
        Settings(port=0)


def test_info_limits_are_the_limits_section_which_the_proto_carries():
    from amr_client.v1 import scoring_pb2 as pb

    limits = Settings(max_groups=16).limits()
    assert list(limits) == list(Limits.model_fields) and limits["max_groups"] == 16
    assert set(limits) == {f.name for f in pb.Limits.DESCRIPTOR.fields}


def test_info_engine_settings_add_the_lora_knobs_to_what_grpc_carries():
    settings = EngineSettings.for_device("cuda").with_overrides(enable_lora=True, max_lora_rank=8)
    report = engine_report(settings)
    assert report == {**settings.describe(), "enable_lora": True, "max_lora_rank": 8,
                      "max_loras": 4, "max_cpu_loras": 8,
                      "lora_target_modules": settings.lora_target_modules}
    assert set(EngineKnobs.model_fields) <= set(report)
    assert list(report)[-1] == "reasons"
