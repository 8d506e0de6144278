"""GradCache (Gao et al. 2021): a contrastive batch K times larger than memory allows, with the same loss and
gradients as the whole batch at once.

1. Embed every sub-batch without a graph (remembering each one's RNG state, so dropout replays identically).
2. Compute the loss over all embeddings at once (every row sees all K x B negatives) and backpropagate it to the
   embeddings only: their gradients are cached.
3. Re-embed each sub-batch with a graph and backpropagate the cached gradients through it (the dot product of
   the embeddings with their cached gradients has exactly those gradients); parameter gradients add up.

Plain gradient accumulation of per-sub-batch losses would give each row only B negatives: a different loss.
Batch-norm layers see sub-batch statistics in steps 1 and 3, as with any chunked forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def cached_backward(chunks: Sequence[tuple], embed: Callable[..., tuple[torch.Tensor, ...]],
                    loss_fn: Callable[..., torch.Tensor], no_sync: Callable | None = None,
                    check: Callable[[torch.Tensor], None] | None = None,
                    scale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Backpropagate loss_fn(embeddings of all chunks) into the parameters that `embed` uses, one chunk's graph at
    a time. chunks: the inputs of each sub-batch; embed(*chunk) -> a tuple of [b, d] tensors (e.g. image and text
    embeddings); loss_fn(*concatenated) -> scalar; no_sync: DDP's context that skips the all-reduce (used for every
    chunk but the last); check(loss) may raise before any parameter gradient is touched; scale: fp16's loss scaling.
    Returns the detached loss."""
    states, outs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state())
            outs.append(tuple(t.detach() for t in embed(*chunk)))
    full = [torch.cat([o[i] for o in outs]).requires_grad_() for i in range(len(outs[0]))]
    loss = loss_fn(*full)
    if check is not None:
        check(loss)
    grads = torch.autograd.grad(scale(loss) if scale is not None else loss, full)
    start = 0
    for j, chunk in enumerate(chunks):
        n = outs[j][0].shape[0]
        _set_rng_state(states[j])
        ctx = no_sync() if no_sync is not None and j < len(chunks) - 1 else nullcontext()
        with ctx:
            again = embed(*chunk)
            surrogate = sum((t.float() * g[start:start + n]).sum() for t, g in zip(again, grads))
            surrogate.backward()
        start += n
    return loss.detach()  # the RNG now stands where the first pass left it: the re-runs replayed it exactly


def split(batch_size: int, k: int) -> list[slice]:
    """K contiguous sub-batches covering batch_size rows (the last ones one row smaller when it does not divide)."""
    k = max(1, min(k, batch_size))
    base, extra = divmod(batch_size, k)
    out, start = [], 0
    for i in range(k):
        n = base + (1 if i < extra else 0)
        out.append(slice(start, start + n))
        start += n
    return out
