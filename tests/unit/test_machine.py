"""CPU defaults from a made-up machine: dtype by native bf16, thread binding by CPU count."""

from __future__ import annotations

from amr_sd.engine.base import EngineSettings
from amr_sd.engine.machine import CpuInfo, cpu_defaults, cpu_list

# Flags as /proc/cpuinfo prints them, trimmed: an AVX2-only EPYC and a Sapphire Rapids Xeon.
AVX2_ONLY = frozenset("fpu sse sse2 avx f16c fma avx2 bmi2".split())
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
SAPPHIRE_RAPIDS = AVX512_NO_BF16 | {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}


def cpu(flags, n=2):
    return CpuInfo("test cpu", flags, tuple(range(n)))


def test_a_cpu_without_native_bf16_gets_float32():
    assert cpu_defaults(cpu(AVX2_ONLY), env={}).dtype == "float32"


def test_avx512_alone_is_not_native_bf16():
    assert cpu_defaults(cpu(AVX512_NO_BF16), env={}).dtype == "float32"


def test_a_cpu_with_avx512_bf16_or_amx_gets_bfloat16():
    assert cpu_defaults(cpu(SAPPHIRE_RAPIDS), env={}).dtype == "bfloat16"
    assert cpu_defaults(cpu(AVX2_ONLY | {"amx_bf16"}), env={}).dtype == "bfloat16"
    assert cpu_defaults(cpu(AVX2_ONLY | {"avx512_bf16"}), env={}).dtype == "bfloat16"


def test_a_small_machine_binds_every_cpu_it_may_use():
    assert cpu_defaults(cpu(AVX2_ONLY, 2), env={}).threads_bind == "0-1"
    assert cpu_defaults(CpuInfo("x", AVX2_ONLY, (1, 2, 3, 6)), env={}).threads_bind == "1-3,6"


def test_a_large_machine_keeps_vllms_automatic_binding():
    assert cpu_defaults(cpu(AVX2_ONLY, 32), env={}).threads_bind == "auto"


def test_an_explicit_vllm_binding_in_the_environment_wins():
    choice = cpu_defaults(cpu(AVX2_ONLY, 2), env={"VLLM_CPU_OMP_THREADS_BIND": "1"})
    assert choice.threads_bind == "1"
    assert "VLLM_CPU_OMP_THREADS_BIND" in choice.reasons["cpu_threads_bind"]


def test_every_choice_says_why():
    choice = cpu_defaults(cpu(AVX2_ONLY), env={})
    assert "avx512_bf16" in choice.reasons["dtype"]
    assert set(choice.reasons) == {"dtype", "cpu_threads_bind"}


def test_cpu_list_compresses_runs():
    assert cpu_list((0,)) == "0"
    assert cpu_list((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"


def test_for_device_cpu_uses_the_machine_choice_a_fixed_kv_cache_and_2048_tokens_a_step():
    s = EngineSettings.for_device("cpu", cpu=cpu(AVX2_ONLY, 2))
    assert (s.dtype, s.cpu_threads_bind, s.kv_cache_gib) == ("float32", "0-1", 2.0)
    assert s.max_num_batched_tokens == 2048 < EngineSettings.for_device("cuda").max_num_batched_tokens
    assert set(s.reasons) == {"dtype", "cpu_threads_bind", "kv_cache_gib", "max_num_batched_tokens"}
    assert s.describe()["gpu_memory_utilization"] is None  # the fixed cache is what counts


def test_user_overrides_win_and_say_so():
    s = EngineSettings.for_device("cpu", cpu=cpu(AVX2_ONLY, 2)).with_overrides(
        dtype="bfloat16", cpu_threads_bind=None)
    assert s.dtype == "bfloat16" and s.reasons["dtype"] == "set by the user"
    assert s.cpu_threads_bind == "0-1"  # None keeps the default


def test_a_memory_share_given_by_name_sizes_the_kv_cache_again():
    s = EngineSettings.for_device("cpu", cpu=cpu(AVX2_ONLY, 2)).with_overrides(
        gpu_memory_utilization=0.1)
    assert s.kv_cache_gib is None and s.describe()["gpu_memory_utilization"] == 0.1
    both = EngineSettings.for_device("cpu", cpu=cpu(AVX2_ONLY, 2)).with_overrides(
        gpu_memory_utilization=0.1, kv_cache_gib=1.0)
    assert both.kv_cache_gib == 1.0


def test_tensor_parallel_size_is_a_setting_with_a_checked_value():
    import pytest
    from pydantic import ValidationError

    from amr_sd.config import Settings

    assert EngineSettings().tensor_parallel_size == 1
    assert Settings(tensor_parallel_size=4).engine_settings().tensor_parallel_size == 4
    with pytest.raises(ValidationError, match="tensor_parallel_size"):
        Settings(tensor_parallel_size=0)


def test_a_cxx_compiler_is_found_the_way_inductor_looks(monkeypatch, tmp_path):
    from amr_sd.engine.vllm import has_cxx_compiler

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    assert not has_cxx_compiler()
    gxx = tmp_path / "g++"
    gxx.write_text("#!/bin/sh\n")
    gxx.chmod(0o755)
    assert has_cxx_compiler()
    gxx.unlink()
    monkeypatch.setenv("CXX", str(gxx.with_name("clang++")))
    assert not has_cxx_compiler()  # named but absent
    gxx.with_name("clang++").write_text("#!/bin/sh\n")
    gxx.with_name("clang++").chmod(0o755)
    assert has_cxx_compiler()
