"""User-facing errors: one line, no traceback (the CLI prints them and exits with `exit_code`)."""


class ConvirtError(Exception):
    """A mistake the user can fix: bad path, missing column, unknown preset, offline download."""

    exit_code = 2
    prefix = "error"

    def line(self) -> str:
        return f"{self.prefix}: {self}"


class Interrupted(ConvirtError):
    """Training stopped by SIGINT / SIGTERM after saving a checkpoint; exits 128 + the signal number."""

    prefix = "interrupted"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class WriteError(ConvirtError):
    """An output could not be written (full disk, size limit, read-only or lost storage, no permission): one line
    naming the file and the cause. The writer has removed its temporary files; what was there before is intact."""

    exit_code = 1
