"""onnxruntime sessions on CUDA when it really works, else on CPU without a wall of red log lines.

onnxruntime-gpu lists CUDAExecutionProvider even on machines with no GPU; asking for it there logs
errors and falls back. So we first ask the CUDA driver (libcuda, via ctypes) whether a device exists,
then let `onnxruntime.preload_dlls()` load CUDA/cuDNN from the nvidia-* wheels that torch installs
(it prints to stdout, which must stay clean for `retrieve --format paths`), and finally keep CUDA only
if the created session actually reports it.

int8 exports keep signed 8-bit weights (fast u8 x s8 kernels with VNNI). x86 CPUs without VNNI (AVX2 only,
AVX-512 without VNNI) add pairs of u8 x s8 products in int16 and saturate; every session asks onnxruntime to
turn such weights unsigned at load there (`session.x64quantprecision`, which onnxruntime applies only on CPUs
that overflow), so one export gives the same embeddings on every CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path

from convirt_cli.torchfree.errors import ConvirtError


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 when there is no driver), without torch."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _preload_cuda_libs() -> None:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(sys.stderr):  # its notes are diagnostics, not results
            try:
                ort.preload_dlls(directory="")  # nvidia-* site packages, then the default search path
            except Exception:  # noqa: BLE001, S110 - a failure here only means the CUDA session will not load
                pass


def session(path: Path, device: str = "auto", threads: int | None = None, bulk: bool = True):
    """An InferenceSession for `path` on `device` (auto | cpu | cuda); returns (session, device used).

    bulk=False (a few inputs, e.g. retrieve's queries): start fast rather than run big batches fast. The weights
    stay as stored (no pre-packing), and the worker threads sleep instead of spinning between ops, which on a
    2-core machine otherwise take the CPU from the thread building the session (40 ms vs ~60 ms for the 90 MB
    MiniLM graph, medians of 8 fresh processes; the first query then runs ~2 ms slower)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not bulk:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.x64quantprecision", "1")  # exact int8 without VNNI (module doc)
    opts.log_severity_level = 3  # errors only: no "some nodes were not assigned" warnings
    if threads:
        opts.intra_op_num_threads = threads
    want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers() \
        and cuda_device_count() > 0
    if device == "cuda" and not want_cuda:
        raise ConvirtError("--device cuda: no CUDA device or onnxruntime has no CUDA provider; use --device cpu")
    if want_cuda:
        _preload_cuda_libs()
        opts.log_severity_level = 4  # a failed CUDA load falls back to CPU; we report that ourselves
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        except Exception:  # noqa: BLE001
            sess = None
        opts.log_severity_level = 3
        if sess is not None and "CUDAExecutionProvider" in sess.get_providers():
            return sess, "cuda"
        if device == "cuda":
            raise ConvirtError("--device cuda: onnxruntime could not load CUDA/cuDNN (install torch's CUDA wheels "
                               "or the CUDA 12/13 + cuDNN 9 libraries); use --device cpu")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), "cpu"
