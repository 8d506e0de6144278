"""int8 text tower for CPU speed within the export's parity bound (cosine >= 0.999 to torch).

onnxruntime's dynamic quantisation gives each activation tensor ONE scale: a few outlier channels and tokens
set the step for everything, and on all-MiniLM-L6-v2 embeddings drift to cosine 0.994. Here every MatMul
with a constant 2-D weight becomes
    x -> (x - mu) / s               per-channel shift and SmoothQuant scale, folded into the LayerNorm that
                                    makes x (free), else one Sub and one Mul where x is no wider than the output
      -> uint8, scaled per token    each token's own range; the zero point fitted on calibration data
      -> MatMulIntegerToFloat       int8 weights per output column, GPTQ-rounded on calibration activations
      -> * token scale (+ bias + mu @ W)
so the matmuls keep onnxruntime's u8s8 kernels and the error drops ~4x (measured in benchmarks/RESULTS.md).
Per-token zero points would be better still, but MatMulIntegerToFloat takes one zero point per tensor.

Pure numpy for the math (`token_scales`, `fake_quant`, `gptq`, `plan_group`); the graph rewrite at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALPHAS = (0.0, 0.25, 0.4, 0.5, 0.65, 0.8)  # SmoothQuant migration strengths tried per MatMul
MAX_TOKENS = 4096  # calibration tokens kept per MatMul input (the same tokens for all)


# ---- math -------------------------------------------------------------------------------------------------

def token_scales(x: np.ndarray, zp: int) -> np.ndarray:
    """Per-row step so that every value of the row fits uint8 with zero point `zp` (0 < zp < 255)."""
    hi = np.maximum(x.max(1, keepdims=True), 0) / (255 - zp)
    lo = -np.minimum(x.min(1, keepdims=True), 0) / zp
    return np.maximum(np.maximum(hi, lo), 1e-8).astype(np.float32)


def fake_quant(x: np.ndarray, zp: int) -> np.ndarray:
    """x [T, K] through per-token uint8 quantisation and back (what the graph's QuantizeLinear does)."""
    s = token_scales(x, zp)
    return ((np.clip(np.rint(x / s) + zp, 0, 255) - zp) * s).astype(np.float32)


def best_zero_point(x: np.ndarray) -> int:
    """The zero point with the smallest mean squared token step (quantisation noise ~ step^2 / 12)."""
    zps = np.arange(8, 249)
    hi, lo = np.maximum(x.max(1), 0), -np.minimum(x.min(1), 0)
    steps = np.maximum(hi[:, None] / (255 - zps), lo[:, None] / zps)
    return int(zps[np.argmin((steps ** 2).mean(0))])


def weight_scales(w: np.ndarray, qmax: int = 127) -> np.ndarray:
    """Symmetric int8 step per output column of w [K, N], codes in [-qmax, qmax]."""
    return (np.maximum(np.abs(w).max(0), 1e-12) / qmax).astype(np.float32)


def round_weights(w: np.ndarray, qmax: int = 127) -> np.ndarray:
    """Round-to-nearest int8 per output column."""
    return np.clip(np.rint(w / weight_scales(w, qmax)), -qmax, qmax).astype(np.int8)


def gptq(w: np.ndarray, x: np.ndarray, qmax: int = 127, damp: float = 0.01) -> np.ndarray:
    """int8 weights [K, N] that minimise ||x w - x q||: rounding input row k, then moving its error onto the rows
    not yet rounded along the inverse Hessian of the inputs (Frantar et al. 2023, GPTQ). Steps as round_weights."""
    step = weight_scales(w, qmax).astype(np.float64)
    h = x.T.astype(np.float64) @ x
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h)) + 1e-12
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: row k holds the update for rows k+1..
    rest = w.astype(np.float64).copy()
    q = np.zeros(w.shape, np.int8)
    for k in range(w.shape[0]):
        q[k] = np.clip(np.rint(rest[k] / step), -qmax, qmax)
        err = (rest[k] - q[k] * step) / u[k, k]
        rest[k + 1:] -= np.outer(u[k, k + 1:], err)
    return q


@dataclass
class GroupPlan:
    """How one input tensor x, and the MatMuls that read it, are quantised."""

    mu: np.ndarray | None  # per-channel shift of x (None: none)
    s: np.ndarray | None  # per-channel divisor of x - mu (None: none)
    zp: int  # uint8 zero point of the per-token quantiser
    weights: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per MatMul: (int8 [K, N], step [N], bias delta [N])


def _matmul_error(x: np.ndarray, w: np.ndarray, y: np.ndarray, mu: np.ndarray, s: np.ndarray,
                  qmax: int) -> tuple[float, int]:
    """Squared error of the quantised x @ w (reference y) under shift mu and scale s, relative; its zero point."""
    xt = (x - mu) / s
    zp = best_zero_point(xt)
    ws = w * s[:, None]
    q = round_weights(ws, qmax).astype(np.float32) * weight_scales(ws, qmax)
    return float(((fake_quant(xt, zp) @ q + mu @ w - y) ** 2).sum() / max((y ** 2).sum(), 1e-30)), zp


def plan_group(x: np.ndarray, ws: list[np.ndarray], transform: bool, qmax: int = 127) -> GroupPlan:
    """Calibration activations x [T, K] and the weights [K, N_i] that read it -> the plan with the smallest
    output error; `transform` says whether a shift and scale of x may be used at all; weight codes in
    [-qmax, qmax]."""
    w = np.concatenate(ws, 1)
    none = (np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32))
    options = [none]
    if transform:
        mu = x.mean(0).astype(np.float32)
        amax, wmax = np.maximum(np.abs(x - mu).max(0), 1e-5), np.maximum(np.abs(w).max(1), 1e-5)
        for a in ALPHAS:
            s = amax ** a / wmax ** (1 - a)
            options.append((mu, (s / np.exp(np.log(s).mean())).astype(np.float32)))
    sample = x[::2]  # picking the option needs less than rounding the weights
    ref = sample @ w
    errs = [_matmul_error(sample, w, ref, mu, s, qmax) for mu, s in options]
    best = int(np.argmin([e for e, _ in errs]))
    (mu, s), zp = options[best], errs[best][1]
    xt = (x - mu) / s
    out = []
    for wi in ws:
        scaled = wi * s[:, None]
        out.append((gptq(scaled, xt, qmax), weight_scales(scaled, qmax), (mu @ wi).astype(np.float32)))
    return GroupPlan(mu if best else None, s if best else None, zp, out)


# ---- graph ------------------------------------------------------------------------------------------------

def linear_groups(graph) -> dict[str, list[int]]:
    """Positions of the MatMul nodes with a constant 2-D weight, grouped by the tensor they read (q, k and v
    share one)."""
    from onnx import TensorProto

    inits = {t.name: t for t in graph.initializer}
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        w = inits.get(n.input[1]) if n.op_type == "MatMul" else None
        if w is not None and len(w.dims) == 2 and w.data_type == TensorProto.FLOAT:
            groups.setdefault(n.input[0], []).append(i)
    return groups


def capture(model_bytes: bytes, names: list[str], feeds: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    """Activations [tokens, K] of the named tensors over the real tokens of `feeds` (padding left out where a
    feed has an attention_mask), about MAX_TOKENS rows each, sampled evenly from every batch as it comes (a
    BERT-base keeps ~100 MB, not the GBs of all its activations)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load_from_string(model_bytes)
    for name in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    per_batch = max(1, MAX_TOKENS // max(len(feeds), 1))
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        mask = feed.get("attention_mask")
        pick, n = None, -1
        for name, value in zip(names, sess.run(names, feed)):
            rows = value[mask.astype(bool)] if mask is not None and value.shape[:2] == mask.shape else value
            rows = rows.reshape(-1, value.shape[-1])
            if len(rows) != n:  # the same tokens for every tensor of this batch
                n, pick = len(rows), np.sort(rng.choice(len(rows), min(per_batch, len(rows)), replace=False))
            got[name].append(rows[pick].astype(np.float32))
    return {name: np.concatenate(parts) for name, parts in got.items()}


def _bias_after(graph, name: str, inits: dict, shape: tuple) -> tuple | None:
    """(the Add node, its input index) when `name` feeds only an Add of a constant vector of `shape`."""
    users = [n for n in graph.node if name in n.input]
    if len(users) == 1 and users[0].op_type == "Add":
        for i, inp in enumerate(users[0].input):
            if inp != name and inp in inits and tuple(inits[inp].dims) == tuple(shape):
                return users[0], i
    return None


def _producer(graph, name: str):
    return next((n for n in graph.node if name in n.output), None)


def quantize_text_int8(path: Path, feeds: list[dict]) -> dict:
    """Rewrite the fp32 text graph at `path` in place (per-token int8, see the module doc), calibrated on
    `feeds` (input dicts of the graph: input_ids, attention_mask). Returns a summary for the manifest.
    The weights stay signed 8-bit on every machine, so an export runs anywhere: x86 CPUs without VNNI would
    saturate u8 x s8 products in int16, and there the serving session (convirt_cli.torchfree.serve.providers)
    has onnxruntime turn them unsigned at load.
    ValueError, with `path` untouched, where the graph has nothing to quantise or onnxruntime cannot run it."""
    from onnx import helper, numpy_helper

    m = _opset21(path)
    g = m.graph
    groups = linear_groups(g)
    if not groups:
        raise ValueError("no MatMul with a constant weight in the text graph")
    acts = capture(m.SerializeToString(), list(groups), feeds)
    inits = {t.name: t for t in g.initializer}
    const = _Consts()
    shared = (const("q8_one", np.float32(1)), const("q8_eps", np.float32(1e-8)), const("q8_axes", np.array([-1])))
    all_nodes = list(g.node)
    before: dict[int, list] = {}  # position -> nodes to insert before it
    replaced: dict[int, list] = {}  # position -> nodes replacing it
    summary = {"matmuls": 0, "shifted": 0, "weight_bits": 8, "zero_points": [], "weights": "int8"}
    for gi, (x, where) in enumerate(groups.items()):
        nodes = [all_nodes[i] for i in where]
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        k, n_out = weights[0].shape[0], sum(w.shape[1] for w in weights)
        prod = _producer(g, x)
        folds = prod is not None and prod.op_type == "LayerNormalization" and all(i in inits for i in prod.input[1:3])
        plan = plan_group(acts[x], weights, transform=folds or k <= n_out)
        p = f"q8_{gi}_"
        summary["shifted"] += int(plan.mu is not None)
        summary["zero_points"].append(plan.zp)
        before[where[0]] = _quantized_input(x, plan, prod if folds else None, p, k, inits, const, shared)
        zp0 = const(p + "zp", np.uint8(plan.zp))
        for j, (at, node, w) in enumerate(zip(where, nodes, plan.weights)):
            replaced[at] = _integer_matmul(g, node, w, plan.mu is not None, f"{p}", j, zp0, inits, const, shared[0])
            summary["matmuls"] += 1
    _splice(g, all_nodes, before, replaced, const.tensors)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _save_if_runnable(m, path)
    summary["method"] = "per-token int8, SmoothQuant shift/scale, GPTQ weights"
    return summary


def _opset21(path: Path):
    """The graph at opset 21 (QuantizeLinear with blocked scales), its exporter's shape annotations dropped."""
    import onnx
    from onnx import version_converter

    try:
        m = version_converter.convert_version(onnx.load(str(path)), 21)
    except Exception as e:
        raise ValueError(f"cannot move the text graph to opset 21: {e}") from e
    del m.graph.value_info[:]
    return m


class _Consts:
    """The initializers the rewrite adds: const(name, value) records one and returns its name."""

    def __init__(self):
        self.tensors: list = []

    def __call__(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.tensors.append(numpy_helper.from_array(np.asarray(value), name))
        return name


def _quantized_input(x: str, plan: GroupPlan, ln, p: str, k: int, inits: dict, const: _Consts,
                     shared: tuple[str, str, str]) -> list:
    """Nodes turning the MatMul input `x` into per-token uint8 `p + "q"` with scales `p + "scale"`: first the
    SmoothQuant shift / scale (folded into the LayerNorm `ln` that makes x, when there is one), then each token's
    range to [0, 255] around zero point plan.zp."""
    from onnx import helper, numpy_helper

    _, eps, axes = shared
    pre: list = []
    src = x
    if plan.mu is not None:
        if ln is not None:  # a second LayerNorm whose affine part already is (y - mu) / s
            gamma = numpy_helper.to_array(inits[ln.input[1]])
            beta = numpy_helper.to_array(inits[ln.input[2]]) if len(ln.input) > 2 and ln.input[2] else 0
            node = helper.make_node("LayerNormalization", [ln.input[0], const(p + "gamma", gamma / plan.s),
                                    const(p + "beta", ((beta - plan.mu) / plan.s).astype(np.float32))],
                                    [p + "x"], name=p + "ln")
            node.attribute.extend(ln.attribute)
            pre.append(node)
        else:
            pre += [helper.make_node("Sub", [x, const(p + "mu", plan.mu)], [p + "xc"]),
                    helper.make_node("Mul", [p + "xc", const(p + "inv_s", (1 / plan.s).astype(np.float32))], [p + "x"])]
        src = p + "x"
    zp = plan.zp
    return pre + [
        helper.make_node("ReduceMax", [src, axes], [p + "max"], keepdims=1),
        helper.make_node("ReduceMin", [src, axes], [p + "min"], keepdims=1),
        helper.make_node("Mul", [p + "max", const(p + "hi", np.float32(1 / (255 - zp)))], [p + "s_hi"]),
        helper.make_node("Mul", [p + "min", const(p + "lo", np.float32(-1 / zp))], [p + "s_lo"]),
        helper.make_node("Max", [p + "s_hi", p + "s_lo", eps], [p + "scale"]),
        helper.make_node("Shape", [p + "max"], [p + "shape"]),
        helper.make_node("Expand", [const(p + "zp3", np.full((1, 1, 1), zp, np.uint8)), p + "shape"], [p + "zps"]),
        helper.make_node("QuantizeLinear", [src, p + "scale", p + "zps"], [p + "q"], axis=-1, block_size=k)]


def _integer_matmul(g, node, weight: tuple, shifted: bool, p: str, j: int, zp0: str, inits: dict, const: _Consts,
                    one: str) -> list:
    """The nodes replacing MatMul `node`: an integer MatMul of the quantised input and int8 weight, rescaled; under a
    shift, x w = (x - mu) w' + mu w, whose constant row goes into the bias that follows (or an Add of its own)."""
    from onnx import helper, numpy_helper

    q, step, delta = weight
    out = node.output[0]
    bias = _bias_after(g, out, inits, delta.shape) if shifted else None
    if bias is not None:
        add, i = bias
        add.input[i] = const(f"{p}bias{j}", numpy_helper.to_array(inits[add.input[i]]) + delta)
    extra_add = shifted and bias is None
    mm_in = [p + "q", const(f"{p}w{j}", q), one, const(f"{p}step{j}", step), zp0]
    chain = [helper.make_node("MatMulIntegerToFloat", mm_in, [f"{p}y{j}"], domain="com.microsoft"),
             helper.make_node("Mul", [f"{p}y{j}", p + "scale"], [f"{p}ys{j}" if extra_add else out])]
    if extra_add:
        chain.append(helper.make_node("Add", [f"{p}ys{j}", const(f"{p}delta{j}", delta)], [out]))
    return chain


def _splice(g, all_nodes: list, before: dict[int, list], replaced: dict[int, list], new_inits: list) -> None:
    """The graph's nodes with the new ones in place, its initializers with the new ones, the unused ones dropped."""
    order = []
    for i, n in enumerate(all_nodes):
        order += before.get(i, [])
        order += replaced.get(i, [n])
    del g.node[:]
    g.node.extend(order)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _save_if_runnable(m, path: Path) -> None:
    """Replace `path` with the checked graph, if this onnxruntime can run it (per-column MatMulIntegerToFloat,
    blocked QuantizeLinear); else ValueError and `path` as it was."""
    import onnx

    onnx.checker.check_model(m)
    tmp = path.with_suffix(".int8.onnx")
    onnx.save(m, str(tmp))
    try:
        import onnxruntime as ort

        ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    except Exception as e:
        tmp.unlink()
        raise ValueError(f"onnxruntime {ort.__version__} cannot run the per-token int8 graph: {e}") from e
    tmp.replace(path)
