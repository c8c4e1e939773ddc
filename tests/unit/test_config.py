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


@pytest.fixture(autouse=True)
def no_binding_from_the_environment(monkeypatch):
    """The CPU defaults honour a set VLLM_CPU_OMP_THREADS_BIND as the user's choice: whatever the
    shell running the suite has set must not decide these tests."""
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)


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
    assert report == {**settings.describe(), "data_parallel_size": 1, "enable_lora": True,
                      "max_lora_rank": 8, "max_loras": 4, "max_cpu_loras": 8,
                      "lora_target_modules": settings.lora_target_modules}
    assert set(EngineKnobs.model_fields) <= set(report)
    assert list(report)[-1] == "reasons"


# ---- data parallelism (vLLM engine copies in one server) ----------------------------------------


@pytest.fixture
def on_two_cpus(monkeypatch):
    """Engine defaults of a 2-CPU machine without native bf16 (binding 0-1), whatever runs the
    test: settings with several engine copies are checked against the CPUs they would get."""
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    two = EngineSettings.for_device("cpu", cpu=AVX2_ONLY_2_CPUS)
    monkeypatch.setattr(EngineSettings, "for_device",
                        classmethod(lambda cls, device=None, cpu=None: two))


def test_data_parallel_size_is_a_flag_and_a_variable_and_the_flag_wins(on_two_cpus, monkeypatch):
    monkeypatch.setenv("AMR_DATA_PARALLEL_SIZE", "2")
    from_env = Settings(**config_flags.given(cli.build_parser().parse_args(["serve"]), Settings))
    args = cli.build_parser().parse_args(["serve", "--data-parallel-size", "1"])
    from_flag = Settings(**config_flags.given(args, Settings))
    assert (from_env.data_parallel_size, from_flag.data_parallel_size) == (2, 1)
    monkeypatch.delenv("AMR_DATA_PARALLEL_SIZE")
    assert Settings().data_parallel_size is None  # unset: one engine copy
    assert Settings().engine_settings().data_parallel_size == 1


def test_data_parallel_size_reaches_vllms_engine_args(on_two_cpus):
    from amr_sd.engine.vllm import _engine_args

    args = cli.build_parser().parse_args(["serve", "--data-parallel-size", "2",
                                          "--tensor-parallel-size", "1"])
    settings = Settings(**config_flags.given(args, Settings)).engine_settings()
    assert settings.data_parallel_size == 2
    assert settings.reasons["data_parallel_size"] == "set by the user"
    engine_args = _engine_args("/models/m", settings)
    assert (engine_args.data_parallel_size, engine_args.tensor_parallel_size) == (2, 1)
    assert settings.cpu_threads_bind == "0|1"  # what _prepare_environment exports to vLLM


def test_info_reports_data_parallel_size_beside_tensor_parallel_size_in_json_only():
    from amr_client.v1 import scoring_pb2 as pb

    report = engine_report(EngineSettings.for_device("cuda").with_overrides(data_parallel_size=4))
    keys = list(report)
    assert report["data_parallel_size"] == 4
    assert keys.index("data_parallel_size") == keys.index("tensor_parallel_size") + 1
    # GetInfo's EngineSettings message (scoring.proto) has no field for it: describe() fills
    # that message, so it must not name one.
    grpc_fields = {f.name for f in pb.EngineSettings.DESCRIPTOR.fields}
    assert "data_parallel_size" not in grpc_fields
    assert set(EngineSettings().describe()) == grpc_fields


@pytest.mark.parametrize("value", [0, -1])
def test_data_parallel_size_below_one_names_the_setting(value):
    with pytest.raises(ValidationError, match="data_parallel_size"):
        Settings(data_parallel_size=value)


def test_serve_refuses_data_parallel_size_0_before_any_engine_starts(capsys):
    assert cli.main(["serve", "--data-parallel-size", "0"]) == 2
    assert "amr-sd serve: data_parallel_size: Input should be greater than or equal to 1" in \
        capsys.readouterr().err


def test_transformers_engine_refuses_several_copies_naming_the_flag(capsys):
    with pytest.raises(ValidationError) as caught:
        Settings(engine="hf", data_parallel_size=2)
    (error,) = caught.value.errors()
    assert error["loc"] == ("data_parallel_size",) and "--data-parallel-size" in error["msg"]
    assert cli.main(["serve", "--engine", "hf", "--data-parallel-size", "2"]) == 2
    assert "amr-sd serve: data_parallel_size: the hf engine runs one model copy" in \
        capsys.readouterr().err
    Settings(engine="hf", data_parallel_size=1)  # one copy is what it runs


def test_transformers_engine_itself_refuses_several_copies():
    from amr_sd.engine.hf import HFEngine

    with pytest.raises(ValueError, match="--data-parallel-size is 2"):
        HFEngine("any-model", EngineSettings(data_parallel_size=2))


def test_score_refuses_several_copies_on_the_transformers_engine(tmp_path, monkeypatch, capsys):
    def no_engine(*_):
        raise AssertionError("the engine must not start")

    monkeypatch.setattr(cli, "_score", no_engine)
    out = tmp_path / "scored.jsonl"
    code = cli.main(["score", "--in", str(EXAMPLES), "--out", str(out), "--step", "0",
                     "--engine", "hf", "--data-parallel-size", "2"])
    assert code == 2 and not out.exists()
    assert "amr-sd score: data_parallel_size: the hf engine runs one model copy" in \
        capsys.readouterr().err


def test_score_takes_data_parallel_size_for_vllm(on_two_cpus):
    args = cli.build_parser().parse_args(["score", "--in", "x", "--out", "y", "--step", "0",
                                          "--data-parallel-size", "2"])
    _, knobs = cli._engine_flags(args)
    assert knobs.engine_settings().data_parallel_size == 2


@pytest.mark.parametrize("cpus,copies,bind", [
    ((0, 1), 2, "0|1"),  # the 2-CPU default 0-1: one core per copy
    ((0, 1, 2, 3), 2, "0-1|2-3"),
    ((0, 1, 2), 2, "0-1|2"),  # sizes differ by at most one
    ((0, 1, 2, 3), 4, "0|1|2|3"),
    ((0, 1), 1, "0-1"),  # one copy: the list as it was
])
def test_on_a_cpu_each_engine_copy_gets_its_own_cpus(cpus, copies, bind):
    settings = EngineSettings.for_device("cpu", cpu=CpuInfo("test cpu", frozenset({"avx2"}), cpus))
    chosen = settings.with_overrides(data_parallel_size=copies)
    assert chosen.cpu_threads_bind == bind
    if copies > 1:
        assert "split between the" in chosen.reasons["cpu_threads_bind"]


def test_tensor_shards_of_each_copy_count_as_processes_too():
    settings = EngineSettings.for_device("cpu", cpu=CpuInfo("x", frozenset(), (0, 1, 2, 3)))
    assert settings.with_overrides(data_parallel_size=2, tensor_parallel_size=2) \
        .cpu_threads_bind == "0|1|2|3"
    # One copy, however sharded, keeps the binding it was given (as before copies existed).
    assert settings.with_overrides(tensor_parallel_size=2).cpu_threads_bind == "0-3"


def test_one_list_per_copy_and_vllms_own_bindings_are_kept():
    cpu = EngineSettings.for_device("cpu", cpu=AVX2_ONLY_2_CPUS)
    for bind in ("1|0", "auto", "nobind"):
        assert cpu.with_overrides(data_parallel_size=2, cpu_threads_bind=bind) \
            .cpu_threads_bind == bind
    # Chained overrides do not split a split list again.
    twice = cpu.with_overrides(data_parallel_size=2).with_overrides(dtype="float32")
    assert twice.cpu_threads_bind == "0|1"
    assert EngineSettings.for_device("cuda").with_overrides(data_parallel_size=2) \
        .cpu_threads_bind is None  # a GPU has no CPU binding to split


@pytest.mark.parametrize("flags,message", [
    (["--data-parallel-size", "4"], "4 vLLM model processes need a CPU each, but "
                                    "cpu_threads_bind '0-1' has 2"),
    (["--data-parallel-size", "2", "--cpu-threads-bind", "0|1|0"], "gives 3 CPU lists"),
    (["--data-parallel-size", "2", "--cpu-threads-bind", "zero"], "is not a CPU list"),
])
def test_copies_the_cpus_cannot_hold_are_refused_before_start(on_two_cpus, flags, message):
    args = cli.build_parser().parse_args(["serve", *flags])
    with pytest.raises(ValidationError) as caught:
        Settings(**config_flags.given(args, Settings))
    (error,) = caught.value.errors()
    assert error["loc"] == ("data_parallel_size",) and message in error["msg"]


def _cpu(id_: int, core: int, node: int):
    from vllm.utils.cpu_resource_utils import LogicalCPUInfo

    return LogicalCPUInfo(id_, core, node)


def test_auto_binding_is_split_by_physical_core_where_numa_cannot_separate_copies():
    from amr_sd.engine.vllm import _auto_bind_per_copy

    # One node, 4 cores with SMT siblings 4-7: vLLM's auto put both copies on the same cores.
    one_node = [_cpu(i, i % 4, 0) for i in range(8)]
    auto = EngineSettings(cpu_threads_bind="auto", data_parallel_size=2)
    placed = _auto_bind_per_copy(auto, one_node)
    assert placed.cpu_threads_bind == "0-1|2-3"
    assert "fewer NUMA nodes (1) than model processes (2)" in placed.reasons["cpu_threads_bind"]
    # A NUMA node per copy: vLLM's auto already gives each copy a node of its own.
    two_nodes = [_cpu(i, i, i // 4) for i in range(8)]
    assert _auto_bind_per_copy(auto, two_nodes) is auto
    one_copy = EngineSettings(cpu_threads_bind="auto")
    assert _auto_bind_per_copy(one_copy, one_node) is one_copy
    # Fewer cores than copies: the SMT siblings too.
    one_core = [_cpu(0, 0, 0), _cpu(1, 0, 0)]
    assert _auto_bind_per_copy(auto, one_core).cpu_threads_bind == "0|1"
