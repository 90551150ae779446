"""The machine a number belongs to, and the process-wide allocator setting of training runs.

:func:`machine_info` and :func:`machine_line` name the CPU (model, cores, the vector instructions torch
dispatches to, native bfloat16 or not): speeds compare only on one machine, so every benchmark prints it
and every study run records it. :func:`reuse_freed_memory` is the glibc allocator setting that training
runs apply.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bfloat16 kernels (AVX-512 BF16 / AMX); elsewhere bf16 is emulated, many
    times slower than float32 (``python benchmarks/bench_extractor.py --fused-adam --channels-last [--bf16]``
    measures both)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def machine_info() -> dict[str, Any]:
    """The CPU a speed or a run's steps/s belongs to: its model name, core count, the vector instructions
    torch dispatches to (``AVX2``, ``AVX512``, ...) and whether bfloat16 is native (what ``bf16=None`` picks)."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        import platform

        model = platform.processor()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        capability = ""
    return {"cpu": model, "cores": os.cpu_count(), "cpu_capability": capability, "bf16_native": cpu_supports_bf16()}


def extractor_precision(model: Any) -> str:
    """``"bf16"`` where ``model``'s policy runs its extractor under bf16 autocast (a
    :class:`zoo_rl.policies.FastCnnPolicy` with ``bf16`` on, on the CPU), else ``"fp32"``: what the model
    computes in, not what was asked for."""
    policy = getattr(model, "policy", model)
    on_cpu = next(policy.parameters()).device.type == "cpu"
    return "bf16" if getattr(policy, "bf16", False) and on_cpu else "fp32"


def machine_line(model: Any = None) -> str:
    """One line naming the machine (and ``model``'s extractor precision) for a benchmark's output."""
    m = machine_info()
    line = f"machine: {m['cpu']}, {m['cores']} cores, {m['cpu_capability']}, bf16 {'native' if m['bf16_native'] else 'not native'}"
    return line if model is None else f"{line}, extractor {extractor_precision(model)}"


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: Environment variable that turns :func:`reuse_freed_memory` off (``0``), for a plain-allocator comparison.
MALLOC_ENV = "ZOO_RL_MALLOC"


def _glibc_mallopt() -> Any:
    """glibc's ``mallopt`` in this process, or ``None`` on another C library (musl, macOS, Windows)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        import ctypes

        return ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):
        return None


def reuse_freed_memory(enable: bool | None = None) -> bool:
    """Let glibc's malloc hand freed tensor memory back to the next tensor instead of to the kernel.

    By default glibc serves every allocation above its mmap threshold (at most 32 MB) with fresh pages
    from the kernel and returns them on ``free``; each new page then costs a page fault when first
    written. A Zoo-Tuning update allocates and frees tens of MB per minibatch (the gradient of the
    3136->512 bank alone is K x 6.4 MB; per-sample gates build B kernels per convolution), so it kept
    paying for page faults (one per 4 kB page, about 10240 for every fresh 40 MB tensor). This raises the mmap threshold to
    1 GiB and stops the heap from being trimmed, so that freed blocks are reused (values are untouched;
    the process keeps its peak memory instead of shrinking after it). Process-wide, glibc only:
    elsewhere it does nothing. ``python benchmarks/bench_throughput.py --variants project,zoo-lite,zoo-sample
    --plain-malloc`` measures it against glibc's defaults.

    :param enable: ``None``: on unless the environment sets ``ZOO_RL_MALLOC=0``.
    :return: whether the settings were applied.
    """
    if enable is None:
        enable = os.environ.get(MALLOC_ENV, "1") != "0"
    if not enable:
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    ok = True
    for option, value in ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 64 << 20)):
        ok = bool(mallopt(option, value)) and ok
    return ok
