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
