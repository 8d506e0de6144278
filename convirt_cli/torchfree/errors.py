"""User-facing errors: one line, no traceback (the CLI prints them and exits 2)."""


class ConvirtError(Exception):
    """A mistake the user can fix: bad path, missing column, unknown preset, offline download."""
