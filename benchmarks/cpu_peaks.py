"""Nominal peak arithmetic of this CPU, per kind of unit: what the benchmarks compare achieved GFLOP/s against.

Per core and cycle: 32 float32 FLOP with AVX2 FMA (2 units x 8 lanes x 2), 64 with AVX-512 (2 units x 16 lanes
x 2; Xeons with one AVX-512 unit, and AMD Zen 4 with its 256-bit datapaths, reach half), and 1024 bfloat16 FLOP
with AMX tiles (one 16 x 16 x 32 tile product, 8192 multiply-adds, per 16 cycles), for matrix products and
convolutions only: batch norm, activations and the optimizer still run on the vector units. The clock is
/proc/cpuinfo's highest "cpu MHz" (a virtual machine shows its nominal clock; turbo can exceed it); cores are the
threads the caller counts (hyper-threads share a core's units, so count physical cores).
"""
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lungseg.engine import onednn_isa_ceiling


@dataclass(frozen=True)
class Unit:
    name: str
    cpuinfo_flag: str
    flop_per_cycle: int
    allowed_under: tuple[str | None, ...]  # oneDNN ceilings (engine.onednn_isa_ceiling) that leave it in use


AVX2 = Unit("AVX2 FMA, float32", "avx2", 32, (None, "avx2", "avx512", "amx"))
AVX512 = Unit("AVX-512 FMA, float32", "avx512f", 64, (None, "avx512", "amx"))
AMX = Unit("AMX tiles, bfloat16", "amx_bf16", 1024, (None, "amx"))


@dataclass(frozen=True)
class Peaks:
    ghz: float
    gflops: dict[str, float]  # unit name -> peak GFLOP/s of the cores asked for, for the units this CPU has


def cpu_peaks(cores: int, cpuinfo: str | None = None) -> Peaks:
    """The peaks of `cores` cores of this CPU (or of the /proc/cpuinfo text given)."""
    info = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    ghz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)) / 1000
    return Peaks(ghz, {unit.name: cores * ghz * unit.flop_per_cycle for unit in (AVX2, AVX512, AMX)
                       if re.search(rf"\b{unit.cpuinfo_flag}\b", info)})


def training_peak(peaks: Peaks, precision: str, environ: Mapping[str, str] = os.environ) -> tuple[float, str]:
    """The peak of the unit a training step in `precision` (engine.training_precision) runs its convolutions on:
    AMX tiles for bfloat16, else the widest float32 FMA unit that oneDNN's instruction-set limit in `environ`
    leaves in use."""
    ceiling = onednn_isa_ceiling(environ)
    for unit in (AMX,) if precision == "bfloat16" else (AVX512, AVX2):
        if unit.name in peaks.gflops and ceiling in unit.allowed_under:
            return peaks.gflops[unit.name], unit.name
    raise ValueError(f"no nominal peak for {precision} training under oneDNN ceiling {ceiling or 'none'} on this "
                     "CPU (bfloat16 needs AMX tiles, float32 AVX2 or AVX-512 FMA)")
