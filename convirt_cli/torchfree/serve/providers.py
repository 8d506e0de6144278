"""onnxruntime sessions on CUDA when it really works, else on CPU without a wall of red log lines.

onnxruntime-gpu lists CUDAExecutionProvider even on machines with no GPU; asking for it there logs
errors and falls back. So we first ask the CUDA driver (libcuda, via ctypes) whether a device exists,
then let `onnxruntime.preload_dlls()` load CUDA/cuDNN from the nvidia-* wheels that torch installs
(it prints to stdout, which must stay clean for `retrieve --format paths`), and finally keep CUDA only
if the created session actually reports it.

int8 exports keep signed weights (fast u8 x s8 kernels with VNNI). x86 CPUs without VNNI (AVX2 only, AVX-512
without VNNI) add pairs of u8 x s8 products in int16 and saturate once weights pass +-64; there an int8 session
asks onnxruntime to turn such weights unsigned at load (`session.x64quantprecision`; u8 x u8 kernels are exact but
slower), so one export gives the same embeddings on every CPU. The option is not free: onnxruntime 1.31 converts
on VNNI CPUs too (ResNet-18 int8: 99 vs 163 images/s, MiniLM 60 vs 75 texts/s on this 2-core VNNI machine), so it
is set only where a one-op probe shows that u8 x s8 really saturates. 7-bit weights (the image tower's, when its
gate allows) are never converted: they cannot saturate.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
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


def _pb(field: int, value: bytes | int) -> bytes:
    """One protobuf field: a varint (int) or length-delimited (bytes) value."""

    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out

    if isinstance(value, int):
        return varint(field << 3) + varint(value)
    return varint(field << 3 | 2) + varint(len(value)) + value


def probe_model(k: int = 64) -> bytes:
    """ONNX bytes of y[1, 1] = MatMulInteger(a: uint8 [1, k], b = 127 * ones int8 [k, 1]), written field by field:
    importing `onnx` to build it would cost ~0.2 s of every int8 `retrieve` (tests check it against onnx.helper)."""

    def tensor_type(elem: int, dims: tuple[int, ...]) -> bytes:
        shape = b"".join(_pb(1, _pb(1, d)) for d in dims)
        return _pb(1, _pb(1, elem) + _pb(2, shape))

    def value_info(name: str, elem: int, dims: tuple[int, ...]) -> bytes:
        return _pb(1, name.encode()) + _pb(2, tensor_type(elem, dims))

    uint8, int8, int32 = 2, 3, 6
    node = _pb(1, b"a") + _pb(1, b"b") + _pb(2, b"y") + _pb(4, b"MatMulInteger")
    weight = _pb(1, k) + _pb(1, 1) + _pb(2, int8) + _pb(8, b"b") + _pb(9, bytes([127]) * k)
    graph = (_pb(1, node) + _pb(2, b"probe") + _pb(5, weight) + _pb(11, value_info("a", uint8, (1, k)))
             + _pb(12, value_info("y", int32, (1, 1))))
    return _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(1, b"") + _pb(2, 13))


@functools.cache
def u8s8_saturates() -> bool:
    """Does this CPU's u8 x s8 int8 kernel saturate? 64 products 255 * 127 summed: exact with VNNI (and off x86),
    clipped where pairs are added in int16 (AVX2, AVX-512 without VNNI). Asked once per process."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(probe_model(), opts, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"a": np.full((1, 64), 255, np.uint8)})[0]
    return int(y[0, 0]) != 255 * 127 * 64


def _preload_cuda_libs() -> None:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(sys.stderr):  # its notes are diagnostics, not results
            try:
                ort.preload_dlls(directory="")  # nvidia-* site packages, then the default search path
            except Exception:  # noqa: BLE001, S110 - a failure here only means the CUDA session will not load
                pass


def session(path: Path, device: str = "auto", threads: int | None = None, bulk: bool = True, int8: bool = False):
    """An InferenceSession for `path` on `device` (auto | cpu | cuda); returns (session, device used).

    int8=True (an int8 graph): exact on CPUs whose u8 x s8 kernels saturate (module doc).

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
    if int8 and u8s8_saturates():
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
