"""An image sent to POST /api/search: the multipart field `image` (a browser form, `curl -F image=@x.dcm`) or the
raw body (`curl --data-binary @x.png -H 'Content-Type: application/octet-stream'`).

Its size is capped while it is read (guard.py); its kind is told by its first bytes, and only the kinds `embed`
reads as single images are let through to the decoder (PNG, JPEG, TIFF, DICOM: 8 and 16 bits): no other Pillow
plug-in ever sees an upload. Decoding is the Searcher's, through the same format table, window policy and
decompression-bomb cap as `embed`. The upload's file name is never used or shown (a DICOM's is often the
patient's name); multipart parts spooled to disk are anonymous temporary files, closed (deleted) before the
response.
"""

from __future__ import annotations

from convirt_cli.torchfree.serve.web.params import BadRequest

KINDS = "PNG, JPEG, TIFF or DICOM"


def sniff(data: bytes) -> str | None:
    """The kind of an upload by its first bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[128:132] == b"DICM":
        return "dicom"
    return None


async def read_upload(request, field: str = "image") -> tuple[bytes, list[tuple[str, str]]]:
    """(the image's bytes, the form's other fields as parameters). 400/415 when there is no usable image."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: list[tuple[str, str]] = []
    if ctype == "multipart/form-data":
        async with request.form(max_files=1, max_fields=16, max_part_size=64 << 10) as form:
            data = None
            for key, value in form.multi_items():
                if key == field and not isinstance(value, str):
                    data = await value.read()
                elif isinstance(value, str):
                    fields.append((key, value))
                else:
                    raise BadRequest(f"multipart field {key[:40]!r} is a file: send the image as field '{field}'")
        if data is None:
            raise BadRequest(f"no image: send the file as multipart field '{field}'")
    elif ctype in ("application/octet-stream", "application/dicom") or ctype.startswith("image/"):
        data = await request.body()
    else:
        raise BadRequest(f"POST /api/search takes multipart/form-data (field '{field}') or an image body "
                         f"(application/octet-stream, image/*, application/dicom), not {ctype[:60] or 'no type'!r}",
                         status=415)
    if not data:
        raise BadRequest("the image is empty (0 bytes)")
    if sniff(data) is None:
        raise BadRequest(f"the upload is not a {KINDS} image (by its first bytes)", status=415)
    return data, fields
