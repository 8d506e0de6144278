"""Which 2-D slices of a volume (NIfTI) become items: `--slices middle | all | every:N`.

Slices are counted along the axial axis after reorienting the volume to RAS (nibabel's as_closest_canonical): 0 is
the most inferior. `middle` is slice n // 2; `every:N` takes 0, N, 2N, ...; `all` every slice. Pure functions."""

from __future__ import annotations

SLICE_POLICIES = ("middle", "all", "every:N")


def parse_slices(spec: str) -> tuple[str, int]:
    """'every:4' -> ('every', 4); 'all' -> ('every', 1); 'middle' -> ('middle', 0). ValueError otherwise."""
    kind, _, arg = spec.strip().partition(":")
    if kind == "middle" and not arg:
        return "middle", 0
    if kind == "all" and not arg:
        return "every", 1
    if kind == "every" and arg.strip().isdigit() and int(arg) >= 1:
        return "every", int(arg)
    raise ValueError(f"slices '{spec}': expected one of {', '.join(SLICE_POLICIES)} (N a whole number >= 1)")


def pick_slices(spec: str, n: int) -> list[int]:
    """The slice indices of a volume of n slices that policy `spec` keeps, in order."""
    kind, step = parse_slices(spec)
    if n < 1:
        return []
    return [n // 2] if kind == "middle" else list(range(0, n, step))
