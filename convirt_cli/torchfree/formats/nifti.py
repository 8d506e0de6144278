"""NIfTI volumes (.nii, .nii.gz): each axial slice a 2-D image, in the file's units (CT: Hounsfield units).

nibabel is an optional extra (`pip install 'convirt[nifti]'`), imported only when a NIfTI is met. The volume is
read in RAS orientation (as nibabel's as_closest_canonical gives it, without reorienting the whole array): slice k
is the k-th axial plane from the feet up, shown as viewers show an axial CT (anterior up, the patient's right on
the image's left). Values are stored values x scl_slope + scl_inter (nibabel's scaling); then the model's window
policy maps them to 8 bits once (`auto`: 8-bit volumes as they are, others the slice's 0.5-99.5 percentiles; a
named CT window such as `--window lung` shows every slice alike).

Metadata: none. The header has no modality or patient fields, and its free-text fields (descrip, aux_file,
db_name, intent_name) may hold anything, names included: they are never read.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.formats.table import Format, ImageError, register_format
from convirt_cli.torchfree.formats.window import lut_friendly, stored_to_uint8, to_uint8

SUFFIXES = (".nii", ".nii.gz")
INSTALL = "pip install 'convirt[nifti]'"
_lock = threading.Lock()
_last: dict = {}  # the last volume's voxels, so its slices read it once (decode threads share it)


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ConvirtError(f"NIfTI files need nibabel: {INSTALL}") from None
    return nibabel


class _Volume:
    """A NIfTI's header and how its voxel axes lie in RAS: `axial` is the voxel axis running feet to head."""

    def __init__(self, path: Path):
        nib = _nibabel()
        try:
            self.img = nib.load(path)  # the header only; the voxels stay on disk
            shape = tuple(int(n) for n in self.img.shape)
            ornt = nib.orientations.io_orientation(self.img.affine)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - a cut or garbled header: nibabel raises many kinds
            raise ImageError(f"unreadable NIfTI header ({type(e).__name__})") from None
        if len(shape) > 3 and any(n > 1 for n in shape[3:]):
            raise ImageError(f"{len(shape)}-D NIfTI ({'x'.join(map(str, shape))}): only 3-D volumes are read; "
                             "split it into volumes (e.g. fslsplit)")
        dtype = self.img.get_data_dtype()
        if dtype.fields is not None or dtype.kind == "c":
            raise ImageError(f"colour or complex NIfTI ({dtype}); only grey volumes are read")
        self.shape = (shape + (1, 1))[:3]
        self.ornt = [(int(axis), int(flip)) for axis, flip in ornt[:3]]
        if len(shape) == 2 and self.ornt[2][0] != 2:  # a 2-D image in no axial plane: its one plane as stored
            self.ornt = [(0, 1), (1, 1), (2, 1)]
        self.axial = next(i for i, (axis, _) in enumerate(self.ornt) if axis == 2)
        self.slices = self.shape[self.axial]
        self.side = min(n for i, n in enumerate(self.shape) if i != self.axial)
        if not path.name.lower().endswith(".gz"):  # a .nii cut short: found from its size, before any voxel is read
            need = int(self.img.dataobj.offset) + int(np.prod(self.shape)) * dtype.itemsize
            if path.stat().st_size < need:
                raise ImageError(f"truncated NIfTI ({path.stat().st_size} bytes, the voxels need {need})")

    def plane(self, voxels: np.ndarray, k: int) -> np.ndarray:
        """Axial slice k (RAS order) of the voxel array -> [H, W] as a viewer shows it."""
        flip = self.ornt[self.axial][1] < 0
        index = [slice(None)] * 3
        index[self.axial] = self.slices - 1 - k if flip else k
        plane = np.asarray(voxels[tuple(index)])  # its two axes in file order
        rest = [i for i in range(3) if i != self.axial]
        if self.ornt[rest[0]][0] != 0:  # make the first axis run to the right, the second to the front
            plane, rest = plane.T, rest[::-1]
        if self.ornt[rest[0]][1] < 0:
            plane = plane[::-1]
        if self.ornt[rest[1]][1] < 0:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane[::-1, ::-1].T)  # rows: anterior first; columns: the patient's right first


def volume(path: Path) -> tuple[int, int]:
    """(axial slices, shorter side of a slice) from the header (a truncated .nii is found by its size)."""
    vol = _Volume(path)
    if vol.side < 2:
        raise ImageError(f"NIfTI whose axial slices are {vol.side} voxel wide (shape "
                         f"{'x'.join(map(str, vol.shape))}): not an axial image")
    return vol.slices, vol.side


def check(path: Path) -> int:
    return volume(path)[1]


def _voxels(path: Path) -> tuple[_Volume, np.ndarray, float, float]:
    """The volume, its stored voxels (a memory map for .nii; .nii.gz decompressed once) and slope / intercept;
    the last volume read is kept, so reading its slices one by one does not decompress it each time."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _lock:
        if _last.get("key") != key:
            vol = _Volume(path)
            try:
                stored = np.asanyarray(vol.img.dataobj.get_unscaled()).reshape(vol.shape, order="A")
            except Exception as e:  # noqa: BLE001 - a truncated or damaged file: zlib, EOF, mmap errors
                raise ImageError(f"unreadable NIfTI voxels (truncated or damaged: {type(e).__name__})") from None
            _last.clear()
            _last.update(key=key, value=(vol, stored, float(vol.img.dataobj.slope), float(vol.img.dataobj.inter)))
        return _last["value"]


def read(path: Path, window: str, slice: int | None, draft: int | None) -> np.ndarray:
    """Axial slice `slice` (None: the middle one) -> uint8 [H, W] under window policy `window`."""
    vol, stored, slope, intercept = _voxels(path)
    k = vol.slices // 2 if slice is None else slice
    if not 0 <= k < vol.slices:
        raise ImageError(f"no slice {k}: the volume has {vol.slices} axial slices")
    try:
        plane = vol.plane(stored, k)
    except Exception as e:  # noqa: BLE001 - a .nii cut short shows when its memory map is read
        raise ImageError(f"unreadable NIfTI voxels (truncated or damaged: {type(e).__name__})") from None
    eight_bit = plane.dtype == np.uint8 and slope == 1 and intercept == 0
    if lut_friendly(plane):
        return stored_to_uint8(plane, window, None, eight_bit, slope=slope, intercept=intercept)
    values = plane.astype(np.float64) * slope + intercept
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageError(f"slice {k} holds no finite value")
    if not finite.all():  # NaN outside a mask: shown as the slice's lowest value
        values[~finite] = values[finite].min()
    return to_uint8(values, window, None, eight_bit)


FORMAT = register_format(Format("nifti", SUFFIXES, read, check=check, volume=volume))
