"""Image formats: one table from a file to the reader that gives its pixels and allow-listed metadata
(table.py), the window policies that map high-bit-depth values to the model's 8 bits (window.py) and the slice
policies of volumes (slices.py). Built in: plain images through Pillow (plain.py), DICOM (dicom.py), NIfTI
(nifti.py); each module registers its format when imported here. A new format is one module calling
`register_format(Format(name, suffixes, read, ...))`."""

from convirt_cli.torchfree.formats import dicom, nifti, plain  # noqa: F401 - each registers its format
from convirt_cli.torchfree.formats.table import (
    MAX_PIXELS,
    Format,
    ImageError,
    check_image,
    check_pixels,
    check_regular,
    format_header,
    format_of,
    formats,
    image_suffixes,
    matched_suffix,
    may_have_header,
    read_gray,
    reading,
    register_format,
    suffix_format,
    unregister_format,
    volume_info,
)

__all__ = ["MAX_PIXELS", "Format", "ImageError", "check_image", "check_pixels", "check_regular", "format_header", "format_of", "formats", "image_suffixes",
           "matched_suffix", "may_have_header", "read_gray", "reading", "register_format", "suffix_format", "unregister_format",
           "volume_info"]
