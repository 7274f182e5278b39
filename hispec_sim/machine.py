"""Machine fingerprint: what a measured profile's timings depend on, and the check that
this machine is the one a profile was measured on.

A measured latency table holds only on the machine (CPU model, ISA, BLAS/oneDNN build,
torch version, threads; GPU, driver and CUDA on GPU) that measured it: `fingerprint()`
records those, `differences()` names the ones that differ. torch is imported lazily
(only by `fingerprint`), so the simulator stays torch-free at module level.
"""
from __future__ import annotations

import os
import platform
import re

# ISA flags that change which kernels torch runs (and so the timings)
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
# what must match for a profile's timings to hold here (hostname and date are recorded only)
COMPARED = ("device", "cpu_model", "logical_cpus", "isa", "torch", "torch_cpu_capability", "blas", "onednn",
            "threads", "gpu_name", "gpu_driver", "cuda")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = val.strip()
                elif key in ("flags", "features") and not flags:
                    flags = val.split()
                if model and flags:
                    break
    except OSError:
        pass
    if not model:
        model = platform.processor() or platform.machine()
    return model, flags


def _torch_build(torch) -> tuple[str, str]:
    """(BLAS, oneDNN) as torch reports its build, e.g. ('mkl 2024.2', 'oneDNN v3.12.0')."""
    try:
        cfg = torch.__config__.show()
    except Exception:  # pragma: no cover - exotic builds
        return "unknown", "unknown"
    blas = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", cfg)
    dnn = re.search(r"(?:MKL-DNN|oneDNN) (v[0-9.]+)", cfg)
    blas_s = (blas.group(1) if blas else "unknown") + (f" {mkl.group(1)}" if mkl else "")
    onednn = f"oneDNN {dnn.group(1)}" if dnn and torch.backends.mkldnn.is_available() else "none"
    return blas_s, onednn


def fingerprint(device: str = "cpu") -> dict:
    """This machine as a profile records it (imports torch)."""
    import torch

    model, flags = _cpuinfo()
    blas, onednn = _torch_build(torch)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - older torch
        capability = "unknown"
    fp = {"device": device, "cpu_model": model, "logical_cpus": os.cpu_count() or 0,
          "isa": [f for f in ISA_FLAGS if f in flags], "torch": torch.__version__, "torch_cpu_capability": capability,
          "blas": blas, "onednn": onednn, "threads": torch.get_num_threads(), "hostname": platform.node(),
          "arch": platform.machine()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        fp.update(gpu_name=props.name, cuda=torch.version.cuda or "unknown", gpu_driver=_nvidia_driver())
    return fp


def _nvidia_driver() -> str:
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            m = re.search(r"Kernel Module\s+([0-9.]+)", f.read())
            return m.group(1) if m else "unknown"
    except OSError:
        return "unknown"


def describe(fp: dict) -> str:
    """One line: 'AMD EPYC, 2 CPUs, avx2, torch 2.13.0+cpu (mkl, oneDNN v3.12.0), 1 thread'."""
    s = (f"{fp.get('cpu_model', '?')}, {fp.get('logical_cpus', '?')} CPUs, {'/'.join(fp.get('isa') or []) or 'no SIMD flags'}, "
         f"torch {fp.get('torch', '?')} ({fp.get('blas', '?')}, {fp.get('onednn', '?')}), {fp.get('threads', '?')} thread(s)")
    if fp.get("gpu_name"):
        s += f", GPU {fp['gpu_name']} (driver {fp.get('gpu_driver', '?')}, CUDA {fp.get('cuda', '?')})"
    return s


def differences(recorded: dict | None, here: dict) -> list[str]:
    """'field: profile X, this machine Y' for every compared field that differs; a profile
    without a fingerprint differs in everything (one entry saying so)."""
    if not isinstance(recorded, dict) or "cpu_model" not in recorded:
        return ["machine: the profile records no machine fingerprint (measured before fingerprints, or not by "
                "`profile measure`)"]
    out = []
    for k in COMPARED:
        a, b = recorded.get(k), here.get(k)
        if a is None and b is None:
            continue
        if a != b:
            out.append(f"{k}: profile {a!r}, this machine {b!r}")
    return out


def check_same_machine(recorded: dict | None, here: dict, allow_other: bool, profile_name: str = "profile") -> str | None:
    """None when this machine is the profile's; a warning line when it is not and
    `allow_other`; otherwise ValueError (one line naming the first difference)."""
    diff = differences(recorded, here)
    if not diff:
        return None
    if diff[0].startswith("machine:"):
        what = f"{profile_name} records no machine fingerprint (measured before fingerprints, or not by `profile measure`)"
    else:
        more = f" (+{len(diff) - 1} more)" if len(diff) > 1 else ""
        what = f"{profile_name} was measured on another machine ({diff[0]}{more})"
    if not allow_other:
        raise ValueError(f"machine: {what}; its timings need not hold here: measure your own (hispec-sim profile "
                         f"measure) or pass --allow-other-machine")
    detail = "; ".join(diff) if not diff[0].startswith("machine:") else "no fingerprint"
    return (f"WARNING: {profile_name} was not measured on this machine ({detail}); predicted times are "
            f"that machine's, not this one's")
