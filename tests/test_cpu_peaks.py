"""The nominal peaks the benchmarks divide by: each kind of CPU in view, and which unit a training step is held to."""
import importlib.util

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("cpu_peaks", REPO / "benchmarks" / "cpu_peaks.py")
peaks_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peaks_module)
AVX2, AVX512, AMX = peaks_module.AVX2.name, peaks_module.AVX512.name, peaks_module.AMX.name
AVX512_BF16 = peaks_module.AVX512_BF16.name

EPYC = "flags\t\t: fpu sse4_2 avx fma avx2 bmi2\ncpu MHz\t\t: 2450.000\n"
EPYC_ZEN4 = ("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\ncpu MHz\t\t: 2596.138\n"
             "flags\t\t: fpu fma avx2 avx512f avx512dq avx512_bf16 avx512_vnni\n")
EPYC_ZEN1 = ("vendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\ncpu MHz\t\t: 1996.249\n"
             "flags\t\t: fpu fma avx2 bmi2\n")
CASCADE_LAKE = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\ncpu MHz\t\t: 2500.000\n"
SAPPHIRE_RAPIDS = ("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\ncpu MHz\t\t: 2000.000\n"
                   "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\ncpu MHz\t\t: 2100.000\n")


def test_each_kind_of_cpu_gets_the_units_it_has_at_its_highest_clock():
    assert peaks_module.cpu_peaks(2, EPYC).gflops == {AVX2: pytest.approx(2 * 2.45 * 32)}
    assert peaks_module.cpu_peaks(2, CASCADE_LAKE).gflops == {AVX2: pytest.approx(160), AVX512: pytest.approx(320)}
    amx = peaks_module.cpu_peaks(2, SAPPHIRE_RAPIDS)
    assert amx.ghz == pytest.approx(2.1) and amx.gflops[AMX] == pytest.approx(2 * 2.1 * 1024)
    assert AVX512 not in peaks_module.cpu_peaks(2, EPYC.replace("avx2", "avx2 avx512_bf16")).gflops  # not avx512f


def test_zen4_runs_avx512_at_half_rate():
    """Zen 4's 512-bit instructions go through 256-bit datapaths; Intel and AMD family 26 count at the full rate."""
    avx2 = 2 * 2.596138 * 32
    zen4 = peaks_module.cpu_peaks(2, EPYC_ZEN4).gflops
    assert zen4 == {AVX2: pytest.approx(avx2), AVX512: pytest.approx(avx2), AVX512_BF16: pytest.approx(2 * avx2)}
    intel, zen5 = EPYC_ZEN4.replace("AuthenticAMD", "GenuineIntel"), EPYC_ZEN4.replace("family\t: 25", "family\t: 26")
    for full_rate in (intel, zen5):
        gflops = peaks_module.cpu_peaks(2, full_rate).gflops
        assert (gflops[AVX512], gflops[AVX512_BF16]) == (pytest.approx(2 * avx2), pytest.approx(4 * avx2))


def test_zen_and_zen_plus_run_avx2_at_half_rate():
    """Zen and Zen+ (family 23, models below 0x30) have 128-bit FMA pipes; Zen 2 (model 0x31 on) and Intel 256-bit."""
    assert peaks_module.cpu_peaks(2, EPYC_ZEN1).gflops == {AVX2: pytest.approx(2 * 1.996249 * 16)}
    zen_plus = EPYC_ZEN1.replace("model\t\t: 1\n", "model\t\t: 8\n")
    assert peaks_module.cpu_peaks(2, zen_plus).gflops == {AVX2: pytest.approx(2 * 1.996249 * 16)}
    zen2 = EPYC_ZEN1.replace("model\t\t: 1\n", "model\t\t: 49\n")
    for full_rate in (zen2, EPYC_ZEN1.replace("AuthenticAMD", "GenuineIntel")):
        assert peaks_module.cpu_peaks(2, full_rate).gflops == {AVX2: pytest.approx(2 * 1.996249 * 32)}


@pytest.mark.parametrize("cpu, precision, limit, unit", [
    (SAPPHIRE_RAPIDS, "bfloat16", None, AMX),
    (SAPPHIRE_RAPIDS, "bfloat16", "DEFAULT", AMX),
    (SAPPHIRE_RAPIDS, "bfloat16", "AVX512_CORE_AMX", AMX),
    (SAPPHIRE_RAPIDS, "float32", None, AVX512),  # mixed_precision off: float32 on the vector units
    (SAPPHIRE_RAPIDS, "bfloat16", "AVX512_CORE_BF16", AVX512_BF16),  # tiles ruled out, dot products left
    (SAPPHIRE_RAPIDS, "float32", "AVX2", AVX2),  # an AVX2-only CPU emulated on an AMX one
    (SAPPHIRE_RAPIDS, "float32", "avx2_vnni", AVX2),
    (SAPPHIRE_RAPIDS, "float32", "AVX10_1_512", AVX512),
    (CASCADE_LAKE, "float32", None, AVX512),
    (CASCADE_LAKE, "float32", "AVX2", AVX2),
    (EPYC, "float32", None, AVX2),
    (EPYC_ZEN4, "bfloat16", None, AVX512_BF16),
    (EPYC_ZEN4, "float32", None, AVX512),  # mixed_precision off
    (EPYC_ZEN4, "float32", "AVX2", AVX2),
    (EPYC, "float32", "AVX512_CORE", AVX2),  # a limit above the CPU leaves what it has
])
def test_training_is_held_to_the_unit_its_precision_runs_on(cpu, precision, limit, unit):
    peaks = peaks_module.cpu_peaks(2, cpu)
    environ = {} if limit is None else {"ONEDNN_MAX_CPU_ISA": limit}
    assert peaks_module.training_peak(peaks, precision, environ) == (peaks.gflops[unit], unit)


@pytest.mark.parametrize("cpu, precision, limit", [
    (SAPPHIRE_RAPIDS, "bfloat16", "AVX2"),  # oneDNN without its tiles: the train stage would use float32
    (SAPPHIRE_RAPIDS, "bfloat16", "AVX512_CORE"),
    (EPYC_ZEN4, "bfloat16", "AVX512_CORE_VNNI"),  # no bfloat16 dot products under this limit
    (CASCADE_LAKE, "bfloat16", None),
    (CASCADE_LAKE, "float32", "SSE41"),  # no FMA units left
    (CASCADE_LAKE, "float32", "AVX"),
    ("flags\t\t: fpu sse2\ncpu MHz\t\t: 3000.0\n", "float32", None),
])
def test_no_peak_where_the_unit_is_missing_or_ruled_out(cpu, precision, limit):
    environ = {} if limit is None else {"ONEDNN_MAX_CPU_ISA": limit}
    with pytest.raises(ValueError, match="no nominal peak"):
        peaks_module.training_peak(peaks_module.cpu_peaks(2, cpu), precision, environ)


def test_the_limit_is_read_from_the_environment_by_default(monkeypatch):
    peaks = peaks_module.cpu_peaks(2, CASCADE_LAKE)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert peaks_module.training_peak(peaks, "float32")[1] == AVX2
