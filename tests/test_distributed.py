"""torchrun with 2 CPU processes (gloo): the global-batch gather gives the single-process loss and gradients."""

import os
import socket
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from convirt_cli.torch.losses import convirt_loss
    from convirt_cli.torch.train.distributed import Dist, gather_with_grad
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    V, U = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    lo, hi = [(0, 3), (3, 5)][r]  # uneven shards, as after dropping a bad image
    v, u = V[lo:hi].clone().requires_grad_(), U[lo:hi].clone().requires_grad_()
    d = Dist(r, w)
    v_all, off = gather_with_grad(v, d)
    u_all, _ = gather_with_grad(u, d)
    loss = convirt_loss(v, u, 0.1, 0.75, v_all=v_all, u_all=u_all, offset=off) * (hi - lo) / 5
    loss.backward()
    Vf, Uf = V.clone().requires_grad_(), U.clone().requires_grad_()
    convirt_loss(Vf, Uf, 0.1, 0.75).backward()
    # DDP averages gradients over ranks; summing the per-rank losses weighted by their share is the same
    ok = torch.allclose(v.grad * 1, Vf.grad[lo:hi], atol=1e-6) and torch.allclose(u.grad, Uf.grad[lo:hi], atol=1e-6)
    print("RANK", r, "OK" if ok else "MISMATCH", float(off))
    dist.destroy_process_group()
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(script_text: str, path) -> tuple[list[str], list]:
    """Run a script as ranks 0 and 1 of a gloo group: (its lines starting with RANK, sorted; every (out, err))."""
    path.write_text(script_text)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(path)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    return sorted(line for o, _ in outs for line in o.splitlines() if line.startswith("RANK")), outs


def test_two_process_gather_matches_one_process(tmp_path):
    lines, outs = two_ranks(SCRIPT, tmp_path / "ddp.py")
    assert lines == ["RANK 0 OK 0.0", "RANK 1 OK 3.0"], outs


NAMING = textwrap.dedent("""
    import time, torch, torch.distributed as dist
    from pathlib import Path
    from convirt_cli.torch.train.distributed import Dist
    from convirt_cli.torch.train.loop import new_run
    from convirt_cli.torchfree.config import PretrainConfig
    dist.init_process_group("gloo")
    r = dist.get_rank()
    if r == 1:  # this rank's clock is a minute ahead: it would name another folder on its own
        real = time.time
        time.time = lambda: real() + 60
    cfg = PretrainConfig(data=Path("."), runs_dir=Path("runs"))
    print("RANK", r, new_run(cfg, Dist(r, 2), torch.device("cpu")).name)
    dist.destroy_process_group()
""")


def test_ranks_name_a_new_run_alike(tmp_path):
    """`torchrun ... pretrain DATA` without --out: every rank trains into rank 0's folder (named by its clock)."""
    lines, outs = two_ranks(NAMING, tmp_path / "naming.py")
    names = {line.split()[2] for line in lines}
    assert len(lines) == 2 and len(names) == 1 and next(iter(names)).startswith("tiny-"), outs
