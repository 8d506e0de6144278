"""How the library reports progress without drawing anything: the two callback shapes the CLI fills in.

`Advance`: called with the number of items just done (a bar's `advance`). `ProgressBar`: (label, total, unit)
-> a context manager giving an `Advance`, for a library function that decides itself whether a bar is worth
showing (cli/progress.py's progress_bar is one).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

Advance = Callable[[int], None]
ProgressBar = Callable[[str, int, str], AbstractContextManager[Advance]]
