"""Nominal peak arithmetic of this CPU, per kind of unit: what the benchmarks compare achieved GFLOP/s against.

Per core and cycle: 32 float32 FLOP with AVX2 FMA (2 units x 8 lanes x 2), 64 with AVX-512 (2 units x 16 lanes x 2;
Xeons with one AVX-512 unit reach half), and 1024 bfloat16 FLOP with AMX tiles (one 16 x 16 x 32 tile product,
8192 multiply-adds, per 16 cycles), for matrix products and convolutions only: batch norm, activations and the
optimizer still run on the vector units. The clock is /proc/cpuinfo's highest "cpu MHz" (a virtual machine shows
its nominal clock; turbo can exceed it).
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

FLOP_PER_CYCLE = {"AVX2 FMA, float32": 32, "AVX-512 FMA, float32": 64, "AMX tiles, bfloat16": 1024}


@dataclass(frozen=True)
class Peaks:
    ghz: float
    gflops: dict[str, float]  # unit -> peak GFLOP/s of the cores asked for, for the units this CPU has


def cpu_peaks(cores: int, cpuinfo: str | None = None) -> Peaks:
    """The peaks of `cores` cores of this CPU (or of the /proc/cpuinfo text given)."""
    info = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    ghz = max(float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)) / 1000
    has = {"AVX2 FMA, float32": r"\bavx2\b", "AVX-512 FMA, float32": r"\bavx512f\b",
           "AMX tiles, bfloat16": r"\bamx_bf16\b"}
    return Peaks(ghz, {unit: cores * ghz * FLOP_PER_CYCLE[unit]
                       for unit, flag in has.items() if re.search(flag, info)})


def training_peak(peaks: Peaks, precision: str, isa_limit: str | None = None) -> tuple[float, str]:
    """The peak of the unit a training step in `precision` ('float32' or 'bfloat16', engine.training_precision)
    runs its convolutions on: AMX tiles for bfloat16 (the train stage uses it only where the CPU has them), else
    the widest float32 FMA unit; ONEDNN_MAX_CPU_ISA (read from the environment when not given) can rule out
    AMX or AVX-512, as oneDNN then does."""
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA", "") if isa_limit is None else isa_limit).upper()
    allowed = {"AMX tiles, bfloat16": not limit or limit == "ALL" or "AMX" in limit,
               "AVX-512 FMA, float32": not limit or limit == "ALL" or "AVX512" in limit,
               "AVX2 FMA, float32": True}
    candidates = ["AMX tiles, bfloat16"] if precision == "bfloat16" else []
    for unit in candidates + ["AVX-512 FMA, float32", "AVX2 FMA, float32"]:
        if unit in peaks.gflops and allowed[unit]:
            return peaks.gflops[unit], unit
    raise ValueError("this CPU has neither AVX2 nor AVX-512: no peak to compare with")
