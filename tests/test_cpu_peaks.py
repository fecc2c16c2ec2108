"""The nominal peaks the benchmarks divide by: each kind of CPU in view, and which unit a training step is held to."""
import importlib.util

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("cpu_peaks", REPO / "benchmarks" / "cpu_peaks.py")
cpu_peaks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_peaks)

EPYC = "flags\t\t: fpu sse4_2 avx fma avx2 bmi2\ncpu MHz\t\t: 2450.000\n"
CASCADE_LAKE = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\ncpu MHz\t\t: 2500.000\n"
SAPPHIRE_RAPIDS = ("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\ncpu MHz\t\t: 2000.000\n"
                   "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\ncpu MHz\t\t: 2100.000\n")


def test_each_kind_of_cpu_gets_the_units_it_has_at_its_highest_clock():
    assert cpu_peaks.cpu_peaks(2, EPYC).gflops == {"AVX2 FMA, float32": pytest.approx(2 * 2.45 * 32)}
    assert cpu_peaks.cpu_peaks(2, CASCADE_LAKE).gflops == {"AVX2 FMA, float32": pytest.approx(160),
                                                         "AVX-512 FMA, float32": pytest.approx(320)}
    amx = cpu_peaks.cpu_peaks(2, SAPPHIRE_RAPIDS)
    assert amx.ghz == pytest.approx(2.1) and amx.gflops["AMX tiles, bfloat16"] == pytest.approx(2 * 2.1 * 1024)


@pytest.mark.parametrize("cpu, precision, isa_limit, unit", [
    (SAPPHIRE_RAPIDS, "bfloat16", "", "AMX tiles, bfloat16"),
    (SAPPHIRE_RAPIDS, "float32", "", "AVX-512 FMA, float32"),  # mixed_precision off: float32 on the vector units
    (SAPPHIRE_RAPIDS, "float32", "AVX2", "AVX2 FMA, float32"),  # the AVX2 emulation of issue 13
    (SAPPHIRE_RAPIDS, "bfloat16", "AVX512_CORE_BF16", "AVX-512 FMA, float32"),  # oneDNN told not to use AMX
    (CASCADE_LAKE, "float32", "", "AVX-512 FMA, float32"),
    (CASCADE_LAKE, "bfloat16", "", "AVX-512 FMA, float32"),  # no tiles: never the AMX peak
    (EPYC, "float32", "", "AVX2 FMA, float32"),
])
def test_training_is_held_to_the_unit_its_precision_runs_on(cpu, precision, isa_limit, unit):
    peaks = cpu_peaks.cpu_peaks(2, cpu)
    assert cpu_peaks.training_peak(peaks, precision, isa_limit) == (peaks.gflops[unit], unit)


def test_a_cpu_without_fma_units_is_refused():
    with pytest.raises(ValueError, match="neither AVX2 nor AVX-512"):
        cpu_peaks.training_peak(cpu_peaks.cpu_peaks(2, "flags\t\t: fpu sse2\ncpu MHz\t\t: 3000.0\n"), "float32", "")
