"""Nominal peak arithmetic of this CPU, per kind of unit: what the benchmarks compare achieved GFLOP/s against.

Per core and cycle: 32 float32 FLOP with AVX2 FMA (2 units x 8 lanes x 2), 64 with AVX-512 (2 units x 16 lanes
x 2), 128 bfloat16 FLOP with AVX-512's bfloat16 dot products (2 units x 16 lanes x 2 products x 2), and 1024
bfloat16 FLOP with AMX tiles (one 16 x 16 x 32 tile product, 8192 multiply-adds, per 16 cycles). AMD Zen 4 (AMD's
family 25 with AVX-512) runs 512-bit instructions through its two 256-bit datapaths, so its AVX-512 units reach
half that; so does AVX2 on AMD Zen and Zen+ (family 23 below model 0x30: two 128-bit FMA pipes), which Zen 2 (from
model 0x30) widened to 256 bits. Xeons with one AVX-512 unit and mobile Zen 5 parts (family 26, as the full-width
server parts) reach half the AVX-512 rate too, but cpuinfo does not tell them apart. The bfloat16 units serve
matrix products and convolutions only: batch norm, activations and the optimizer still run in float32. The clock is
/proc/cpuinfo's highest "cpu MHz": a virtual machine shows its nominal clock, and turbo can take a kernel past 100%
of the peak computed from it. Cores are the threads the caller counts (hyper-threads share a core's units, so
count physical cores).
"""
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lungseg.engine import onednn_allows, onednn_isa_ceiling


@dataclass(frozen=True)
class Unit:
    name: str
    cpuinfo_flag: str
    flop_per_cycle: int
    onednn_level: str  # the oneDNN instruction-set level that uses it (engine.ONEDNN_ISA_LEVELS)


AVX2 = Unit("AVX2 FMA, float32", "avx2", 32, "avx2")
AVX512 = Unit("AVX-512 FMA, float32", "avx512f", 64, "avx512")
AVX512_BF16 = Unit("AVX-512 dot products, bfloat16", "avx512_bf16", 128, "avx512_bf16")
AMX = Unit("AMX tiles, bfloat16", "amx_bf16", 1024, "amx")
UNITS = (AVX2, AVX512, AVX512_BF16, AMX)


@dataclass(frozen=True)
class Peaks:
    ghz: float
    gflops: dict[str, float]  # unit name -> peak GFLOP/s of the cores asked for, for the units this CPU has


def cpu_peaks(cores: int, cpuinfo: str | None = None) -> Peaks:
    """The peaks of `cores` cores of this CPU (or of the /proc/cpuinfo text given)."""
    info = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    ghz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)) / 1000
    half_width = _half_width_units(info)
    return Peaks(ghz, {unit.name: cores * ghz * unit.flop_per_cycle / (2 if unit in half_width else 1)
                       for unit in UNITS if re.search(rf"\b{unit.cpuinfo_flag}\b", info)})


def _half_width_units(cpuinfo: str) -> tuple[Unit, ...]:
    """The units this CPU runs through datapaths half their width (AMD's Zen and Zen+ AVX2, Zen 4's AVX-512)."""
    family = re.search(r"cpu family\s*:\s*(\d+)", cpuinfo)
    model = re.search(r"^model\s*:\s*(\d+)", cpuinfo, re.MULTILINE)
    if re.search(r"vendor_id\s*:\s*AuthenticAMD", cpuinfo) is None or family is None:
        return ()
    if int(family.group(1)) == 23 and model is not None and int(model.group(1)) < 0x30:
        return (AVX2,)
    return (AVX512, AVX512_BF16) if int(family.group(1)) == 25 else ()


def training_peak(peaks: Peaks, precision: str, environ: Mapping[str, str] = os.environ) -> tuple[float, str]:
    """The peak of the unit a training step in `precision` (engine.training_precision) runs its convolutions on:
    the widest unit of that precision (AMX tiles, else AVX-512 dot products for bfloat16; AVX-512, else AVX2 FMA for
    float32) that oneDNN's instruction-set limit in `environ` leaves in use."""
    ceiling = onednn_isa_ceiling(environ)
    for unit in (AMX, AVX512_BF16) if precision == "bfloat16" else (AVX512, AVX2):
        if unit.name in peaks.gflops and onednn_allows(unit.onednn_level, environ):
            return peaks.gflops[unit.name], unit.name
    raise ValueError(f"no nominal peak for {precision} training under oneDNN ceiling {ceiling or 'none'} on this "
                     "CPU (bfloat16 needs AMX tiles or AVX-512 dot products, float32 AVX2 or AVX-512 FMA)")
