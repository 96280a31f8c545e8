"""How close each variant comes to what the CPU could do: multiply-adds per image against the
CPU's peak rate of float32 fused multiply-adds (FMA).

The peak is ``cores used x clock x FMA units per core x float32 lanes per FMA``: 2 FMA units per
core (every x86-64 server core since Intel Haswell and AMD Zen 2; Zen 1 had 2 at half width),
8 lanes with AVX2 and 16 with AVX-512 (when ``avx512f`` is among the flags), at the nominal clock
the kernel reports (``cpu MHz`` in ``/proc/cpuinfo``; a virtual machine shows its host's, and a
core boosting above it would lower every share). It is the float32 limit; int8 rows are given
against it too, as a common yardstick (without VNNI, an int8 multiply-add goes through
``vpmaddwd`` on int8 values widened to int16: 16 products per 256-bit instruction against an
FMA's 8, with the widening and the requantization to pay around it; with VNNI, ``vpdpbusd`` does
32). Where the flags or the clock are unknown (ARM, macOS, Windows) there is no peak.
"""

from __future__ import annotations

import os
from pathlib import Path

FMA_UNITS = 2


def multiply_adds(model) -> int:
    """Multiply-adds of one image through a Keras model's ``Conv2D``, ``DepthwiseConv2D``,
    ``SeparableConv2D`` and ``Dense`` layers (the rest is a few per cent at most)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                              keras.layers.SeparableConv2D, keras.layers.Dense)):
            out = layer.output.shape
            inputs = layer.input.shape[-1]
            positions = int(out[1]) * int(out[2]) if len(out) == 4 else 1
            if isinstance(layer, keras.layers.Dense):
                total += inputs * int(out[-1])
            elif isinstance(layer, keras.layers.DepthwiseConv2D):
                height, width = layer.kernel_size
                total += positions * height * width * inputs * layer.depth_multiplier
            elif isinstance(layer, keras.layers.SeparableConv2D):
                height, width = layer.kernel_size
                depth = inputs * layer.depth_multiplier
                total += positions * (height * width * depth + depth * int(out[-1]))
            else:
                height, width = layer.kernel_size
                total += positions * height * width * inputs * int(out[-1])
    return total


def clock_ghz() -> float | None:
    """The nominal clock in GHz (``cpu MHz`` of ``/proc/cpuinfo``), or ``None``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000
    except (OSError, ValueError):
        pass
    return None


def fma_peak(threads: int, flags: list[str] | None) -> dict | None:
    """The CPU's float32 FMA peak at ``threads`` cores: multiply-adds per second and how it was
    computed; ``None`` without x86 FMA flags or a known clock."""
    ghz = clock_ghz()
    if not flags or "fma" not in flags or ghz is None:
        return None
    lanes = 16 if "avx512f" in flags else 8
    cores = min(threads, os.cpu_count() or 1)
    return {"multiply_adds_per_s": cores * ghz * 1e9 * FMA_UNITS * lanes,
            "how": f"{cores} core(s) x {ghz:.3f} GHz (cpu MHz) x {FMA_UNITS} FMA units x "
                   f"{lanes} float32 lanes"}


def share_of_peak(multiply_adds: int | None, median_ms: float, peak: dict | None) -> float | None:
    """The share of the FMA peak reached by one image's multiply-adds in ``median_ms``."""
    if not multiply_adds or peak is None or median_ms <= 0:
        return None
    return multiply_adds / (median_ms / 1e3) / peak["multiply_adds_per_s"]
