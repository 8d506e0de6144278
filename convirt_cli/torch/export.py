"""torch -> ONNX: image.onnx and text.onnx ending in the projected, L2-normalised embedding, plus the
tokenizer, preprocess.json and manifest.json, checked against torch on every export (DESIGN: parity at
every boundary). A failed parity check aborts: nothing is written to the output folder.

Inputs/outputs of the graphs:
  image.onnx  pixels float32 [batch, C, S, S] (normalised as preprocess.json says) -> embeds [batch, d]
  image_dense.onnx  pixels -> embeds [batch, d], cells [batch, h, w, d] (each cell of the feature grid through the
              same projection, L2-normalised: what `convirt explain` maps; always fp32)
  text.onnx   input_ids, attention_mask int64 [batch, seq] -> embeds [batch, d]
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convirt_cli.torch.classifier import ImageClassifier, load_classifier, scores_from_logits
from convirt_cli.torch.model import ConVIRT, ImageModel, load_model
from convirt_cli.torch.packed import PackedText, packable
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import read_json, weights_fingerprint, write_json
from convirt_cli.torchfree.outputs import check_folder, owned_dir
from convirt_cli.torchfree.runs import run_warnings

FP32_MAX_DIFF, FP32_MIN_COS = 1e-4, 0.9999
LOW_MIN_COS, LOW_MIN_OVERLAP = 0.999, 0.9  # fp16 / int8: cosine and retrieval top-10 overlap


class ImageEncoder(nn.Module):
    def __init__(self, model: ConVIRT):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class DenseImageEncoder(nn.Module):
    def __init__(self, model: ConVIRT | ImageModel):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_dense(pixels)


class TextEncoder(nn.Module):
    """The text graph: pad-free (convirt_cli.torch.packed) where the tower is a plain BERT, else the tower as is."""

    def __init__(self, model: ConVIRT, pad_free: bool = True):
        super().__init__()
        self.model = model
        bert = model.text.model
        self.pad_free = pad_free and packable(bert)
        self.tower = PackedText(bert, model.cfg.text.pooling) if self.pad_free else model.text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.text_proj(self.tower(input_ids, attention_mask)), dim=-1)


@dataclass
class Variant:
    """Which precision each graph gets."""

    fp16: bool = False
    int8_text: bool = False
    int8_image: bool = False

    @property
    def image(self) -> str:
        return "int8" if self.int8_image else ("fp16" if self.fp16 else "fp32")

    @property
    def text(self) -> str:
        return "int8" if self.int8_text else ("fp16" if self.fp16 else "fp32")


def preprocess_spec(model: ConVIRT | ImageModel) -> dict:
    """Everything the torch-free path needs to turn a file or a string into graph inputs."""
    if not model.has_text:
        return model.cfg.image.preprocess.to_json()
    tx, tok = model.cfg.text, model.tokenizer
    return model.cfg.image.preprocess.to_json() | {"max_length": tx.max_length,
            "padding": "longest", "truncation": True, "pad_id": tok.pad_token_id, "pad_token": tok.pad_token}


def _onnx_export(module: nn.Module, args: tuple, path: Path, names: list[str], opset: int,
                 outputs: tuple[str, ...] = ("embeds",), **how) -> None:
    """torch.onnx.export, quietly; `how`: dynamo=True with dynamic_shapes, or dynamo=False with dynamic_axes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=names, output_names=list(outputs),
                          opset_version=opset, external_data=False, verbose=False, **how)


def export_graphs(model: ConVIRT | ImageModel, out: Path, opset: int) -> str | None:
    """Write out/image.onnx and, for a model with text, out/text.onnx (fp32); returns how the text graph was made."""
    model.eval()  # a wrapper left in train mode would export dropout
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    size, chans = model.cfg.image.image_size, model.cfg.image.in_chans
    _onnx_export(ImageEncoder(model).eval(), (torch.randn(2, chans, size, size),), out / "image.onnx", ["pixels"],
                 opset, dynamo=True, dynamic_shapes={"pixels": {0: batch}})
    _onnx_export(DenseImageEncoder(model).eval(), (torch.randn(2, chans, size, size),), out / "image_dense.onnx",
                 ["pixels"], opset, ("embeds", "cells"), dynamo=True, dynamic_shapes={"pixels": {0: batch}})
    if not model.has_text:
        return None
    seq = torch.export.Dim("seq", min=2, max=model.cfg.text.max_length)
    tok = model.tokenizer(["chest x-ray", "no acute cardiopulmonary process seen today"], padding=True,
                          return_tensors="pt")
    args = (tok["input_ids"], tok["attention_mask"])
    names = ["input_ids", "attention_mask"]
    # The TorchScript exporter with eager attention gives the plain MatMul/Add graph the int8 quantiser and
    # onnxruntime's fusions are written for (the dynamo graph ran fp32 at 0.80-0.95x torch: benchmarks/RESULTS.md).
    model.text.model.set_attn_implementation("eager")
    text = TextEncoder(model).eval()
    form = "pad-free BERT" if text.pad_free else "tower as is"
    try:
        _onnx_export(text, args, out / "text.onnx", names, opset, dynamo=False,
                     dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
        return f"eager (torchscript exporter), {form}"
    except Exception:  # noqa: BLE001 - an architecture the TorchScript tracer cannot take: use the dynamo exporter
        _onnx_export(TextEncoder(model, pad_free=False).eval(), args, out / "text.onnx", names, opset, dynamo=True,
                     dynamic_shapes={n: {0: batch, 1: seq} for n in names})
        return "eager, tower as is"


def external_weights(path: Path) -> None:
    """Move the graph's weights into `<graph>.onnx.data` beside it: onnxruntime maps that file instead of parsing
    it out of the protobuf, so a session on a 90 MB text graph starts ~3x faster (benchmarks/retrieve_bench.py)."""
    import onnx

    m = onnx.load(str(path))
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=1024)
    os.chmod(data, 0o644)


def to_fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    onnx.save(m, str(path))


def calibration_texts(model: ConVIRT, run: Path, n: int = 256, seed: int = 1) -> list[str]:
    """Texts to fit the int8 text tower on: up to n reports of the run's own data when it is still there, and
    random-word texts of every length (another seed than the parity check's) so short queries are covered."""
    from convirt_cli.torchfree.data.readers import read_rows

    texts: list[str] = []
    cfg = read_json(run / "config.json") if (run / "config.json").is_file() else {}
    if cfg.get("data") and Path(cfg["data"]).exists():
        try:
            rows = read_rows(cfg["data"], image_col=cfg.get("image_col", "image"), text_col=cfg.get("text_col", "text"),
                             sections=cfg.get("sections") or ())
            texts = list(dict.fromkeys(r.text for r in rows if r.text and r.text.strip()))
        except (ConvirtError, OSError, ValueError, KeyError):
            texts = []
        np.random.default_rng(seed).shuffle(texts)
    return texts[:n] + parity_inputs(model, seed=seed, n=64)[1]


def quantize_text(model: ConVIRT, path: Path, texts: list[str]) -> dict:
    """text.onnx (fp32) -> per-token int8 calibrated on `texts` (convirt_cli.torch.quantize); where that cannot be
    done (no MatMul of a constant weight, an onnxruntime too old to run it) onnxruntime's dynamic quantisation.
    Either way the parity check decides whether the export stands."""
    from convirt_cli.torch.quantize import quantize_text_int8

    feeds = []
    for i in range(0, len(texts), 32):
        tok = model.tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=model.cfg.text.max_length,
                              return_tensors="np")
        feeds.append({k: tok[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    try:
        return quantize_text_int8(path, feeds) | {"calibration_texts": len(texts)}
    except ValueError as e:
        to_int8(path)
        return {"method": "onnxruntime dynamic int8", "why": str(e)[:200]}


def run_images(model, run: Path, n: int, seed: int = 1) -> np.ndarray | None:
    """Up to n of the run's own images (a seeded sample) as model pixels [N, C, S, S]; None when fewer than 8 are
    still on disk. What the reduced-precision gates check on: images like the ones the export will embed."""
    from convirt_cli.torchfree.data.readers import read_rows

    pre = model.cfg.image.preprocess
    cfg = read_json(run / "config.json") if (run / "config.json").is_file() else {}
    grays = []
    if cfg.get("data") and Path(cfg["data"]).exists():
        try:
            rows = read_rows(cfg["data"], image_col=cfg.get("image_col", "image"), text_col=None)
        except (ConvirtError, OSError, ValueError, KeyError):
            rows = []
        order = np.random.default_rng(seed).permutation(len(rows))
        for i in order:
            try:
                grays.append(pre.decode(rows[i].image, rows[i].slice))
            except (OSError, ValueError):
                continue
            if len(grays) >= n:
                break
    return pre.pixels(np.stack(grays)) if len(grays) >= 8 else None


def calibration_images(model, run: Path, n: int = 64, seed: int = 1) -> tuple[np.ndarray, str]:
    """Pixels to calibrate (and check) the int8 image tower on: the run's own images when they are still on disk,
    else smooth random grey images. Returns (pixels [N, C, S, S], where they came from)."""
    pixels = run_images(model, run, n, seed)
    if pixels is not None:
        return pixels, f"{len(pixels)} of the run's images"
    return random_pixels(model.cfg.image, np.random.default_rng(seed), n), \
        "random grey images (the run's data is not on disk)"


SEVEN_BIT_MIN_COS, SEVEN_BIT_MIN_OVERLAP = 0.9995, 0.95  # 7-bit image weights only with room to spare under the gate


def quantize_image(path: Path, pixels: np.ndarray, held_out: np.ndarray | None = None) -> dict:
    """image.onnx (fp32) -> static int8 (QDQ): weights per output channel, activations with ranges calibrated on
    `pixels`.

    Weights get 7 bits (codes in [-64, 64], onnxruntime's reduce_range) when that stays well inside the gate on
    `held_out` images (cosine >= 0.9995, top-10 overlap >= 0.95 against the fp32 graph), else 8. With 7 bits a pair
    of u8 x s8 products fits int16, so x86 CPUs without VNNI run the same fast signed kernels exactly, where 8-bit
    weights must be made unsigned at load (u8 x u8: ~20% more instructions, RESULTS.md int8_isa_bench). VNNI CPUs
    run both alike."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from convirt_cli.torchfree.serve.providers import session

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": pixels[i:i + 8]} for i in range(0, len(pixels), 8)])

        def get_next(self):
            return next(self.batches, None)

    check = (held_out if held_out is not None and len(held_out) else pixels).astype(np.float32)

    def embed(graph: Path, int8: bool) -> np.ndarray:
        sess = session(graph, "cpu", int8=int8)[0]
        return np.concatenate([sess.run(None, {"pixels": check[i:i + 8]})[0] for i in range(0, len(check), 8)])

    m = onnx.load(str(path))
    del m.graph.value_info[:]
    src = path.with_suffix(".f32.onnx")
    onnx.save(m, str(src))
    tmp = path.with_suffix(".int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        ref, tried = embed(src, int8=False), {}
        for bits in (7, 8):
            quantize_static(str(src), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=bits == 7,
                            op_types_to_quantize=["Conv", "MatMul"])  # the projection head's Gemms stay fp32: tiny
            got = embed(tmp, int8=True)
            seen = {"min_cosine": round(float(_cos(ref, got).min()), 6), "top10_overlap": topk_overlap(ref, got)}
            if bits == 8 or (seen["min_cosine"] >= SEVEN_BIT_MIN_COS and seen["top10_overlap"] >= SEVEN_BIT_MIN_OVERLAP):
                break
            tried = {"7-bit weights": seen}
    finally:
        root.setLevel(level)
        src.unlink(missing_ok=True)
    os.replace(tmp, path)
    return {"method": "onnxruntime static int8 (QDQ, per-channel weights)", "weight_bits": bits,
            "weights": "int8", "calibration_images": len(pixels), "vs_fp32_graph": seen | {"images": len(check)}} \
        | ({"rejected": tried} if tried else {})


def to_int8(path: Path) -> None:
    """Dynamic quantisation: int8 weights of MatMul/Gemm (per channel), activations quantised per batch at run time."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m = onnx.load(str(path))
    del m.graph.value_info[:]  # the exporter's intermediate shapes trip the quantiser's shape inference
    tmp = path.with_suffix(".int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice is for static quantisation
    try:
        quantize_dynamic(m, str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=True,  # per output channel: ~4x smaller cosine error on MiniLM
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # untyped intermediates
    finally:
        root.setLevel(level)
    os.replace(tmp, path)


def _words(model: ConVIRT) -> list[str]:
    words = sorted(w for w in model.tokenizer.get_vocab() if w.isalpha() and len(w) > 2)
    return words or ["lung", "heart", "normal", "effusion"]


def random_pixels(im, rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth random grey images with grain, through the real preprocessing of image tower config `im`."""
    from PIL import Image

    size = im.image_size
    gray = np.stack([np.asarray(Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)) for _ in range(n)])
    gray = np.clip(gray + rng.normal(0, 8, gray.shape), 0, 255).astype(np.uint8)
    return im.preprocess.pixels(gray)


def parity_inputs(model: ConVIRT, seed: int = 0, n: int = 48) -> tuple[np.ndarray, list[str]]:
    """Random images (random_pixels) and texts of 1 word up to past max_length."""
    rng = np.random.default_rng(seed)
    pixels = random_pixels(model.cfg.image, rng, n)
    if not model.has_text:
        return pixels, []
    words = _words(model)
    lengths = [1, 3, model.cfg.text.max_length + 20] + list(rng.integers(2, 40, n - 3))
    texts = [" ".join(rng.choice(words, size=int(k))) for k in lengths]
    return pixels, texts


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def topk_overlap(ref: np.ndarray, test: np.ndarray, k: int = 10) -> float:
    """Mean overlap of the top-k neighbours (among ref rows) of each row, ranked by ref vs by test queries."""
    k = min(k, len(ref))
    a = np.argsort(-(ref @ ref.T), axis=1)[:, :k]
    b = np.argsort(-(test @ ref.T), axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def check_parity(model: ConVIRT | ImageModel, folder: Path, variant: Variant, seed: int = 0,
                 real: np.ndarray | None = None) -> dict:
    """Run the exported graphs on fresh inputs (other batch sizes and lengths than the export sample, texts
    tokenised by the fast path) and compare with torch; raise ConvirtError with the numbers if off. `real`: the
    run's own images not used for calibration, checked with the random ones (the int8 image gate)."""
    from convirt_cli.torchfree.serve.encoder import OnnxEncoder

    pixels, texts = parity_inputs(model, seed)
    on = "random pixels"
    if real is not None and len(real):  # int8 / fp16: images like the ones it will embed, not synthetic ones
        pixels, on = real.astype(np.float32), f"{len(real)} of the run's images"
    enc = OnnxEncoder(folder, device="cpu")
    with torch.no_grad():
        ref_img = model.encode_image(torch.from_numpy(pixels)).numpy()
    got_img = np.concatenate([enc.image_forward(pixels[i:i + 5]) for i in range(0, len(pixels), 5)])
    checks = [("image", ref_img, got_img, variant.image), dense_check(model, enc, pixels)]
    if model.has_text:
        fast_tok = enc.tokenize(texts[:5])
        ref_tok = model.tokenizer(texts[:5], padding=True, truncation=True, max_length=model.cfg.text.max_length)
        if fast_tok["input_ids"].tolist() != ref_tok["input_ids"]:
            raise ConvirtError("export parity: the exported tokenizer.json tokenises differently from the torch tower")
        with torch.no_grad():
            tok = model.tokenizer(texts, padding=True, truncation=True, max_length=model.cfg.text.max_length,
                                  return_tensors="pt")
            ref_txt = model.encode_text(tok["input_ids"], tok["attention_mask"]).numpy()
        got_txt = enc.encode_texts(texts, batch_size=5, by_length=False)  # padded batches of mixed lengths
        checks.append(("text", ref_txt, got_txt, variant.text))
    report, failures = {}, []
    for name, ref, got, prec in checks:
        # (top-10 overlap on the first 1,024 rows: a dense graph has h x w rows per image)
        r = {"precision": prec, "max_abs_diff": float(np.abs(ref - got).max()), "min_cosine": float(_cos(ref, got).min()),
             "top10_overlap": topk_overlap(ref[:1024], got[:1024])}
        report[name] = r | ({"on": on} if name == "image" else {})
        if prec == "fp32":
            ok = r["max_abs_diff"] <= FP32_MAX_DIFF and r["min_cosine"] >= FP32_MIN_COS
            want = f"max|diff| <= {FP32_MAX_DIFF:g}, cosine >= {FP32_MIN_COS}"
        else:
            ok = r["min_cosine"] >= LOW_MIN_COS and r["top10_overlap"] >= LOW_MIN_OVERLAP
            want = f"cosine >= {LOW_MIN_COS}, top-10 overlap >= {LOW_MIN_OVERLAP}"
        if not ok:
            failures.append(f"{name} ({prec}): max|diff| {r['max_abs_diff']:.3g}, min cosine {r['min_cosine']:.6f}, "
                            f"top-10 overlap {r['top10_overlap']:.3f}; want {want}")
    if failures:
        raise ConvirtError("export parity check failed, nothing written: " + "; ".join(failures))
    return report | {"images": len(pixels), "texts": len(texts) if model.has_text else 0}


def dense_check(model: ConVIRT | ImageModel, enc, pixels: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, str]:
    """The dense graph's cells vs torch's, one row per cell (cosine of each cell), on the parity pixels."""
    with torch.no_grad():
        ref = model.encode_dense(torch.from_numpy(pixels))[1].numpy()
    got = np.concatenate([enc.dense_forward(pixels[i:i + 5])[1] for i in range(0, len(pixels), 5)])
    return "image_dense", ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1]), "fp32"


def export_onnx(run: Path, out: Path | None = None, fp16: bool = False, int8_text: bool = False, opset: int = 18,
                seed: int = 0, on_stage: Callable[[str], None] | None = None,
                int8_image: bool = False, wait: bool = False) -> tuple[Path, dict]:
    """A finished run directory -> an export folder (default RUN/onnx); returns (folder, manifest). `out` must be
    absent, empty or an export (outputs.check_folder); `wait`: wait for another export writing it."""
    stage = on_stage or (lambda s: None)
    run = Path(run)
    out = Path(out) if out is not None else run / "onnx"
    check_folder(out, "export", inputs=[run / "model.json"])
    variant = Variant(fp16=fp16, int8_text=int8_text, int8_image=int8_image)
    stage("loading the run")
    model = load_model(run).eval()
    if int8_text and not model.has_text:
        raise ConvirtError(f"{run} is image-only (no text tower); drop --int8-text")
    towers = ["image", "text"] if model.has_text else ["image"]
    int8 = None
    with owned_dir(out, "export", wait) as tmp:
        stage(f"exporting {' and '.join(t + '.onnx' for t in towers)}")
        text_graph = export_graphs(model, tmp, opset)
        real = None
        if int8_image:
            stage("quantising the image tower to int8")
            pixels, origin = calibration_images(model, run, n=96)
            calib, real = pixels[:64], (pixels[64:] if len(pixels) > 64 else None)  # held out for the gate
            int8 = (int8 or {}) | {"image": quantize_image(tmp / "image.onnx", calib, real) | {"calibrated_on": origin}}
        if fp16 and not int8_image:
            stage("converting to fp16")
            to_fp16(tmp / "image.onnx")
            # gate on the run's own images where they are on disk: random pixels hid fp16's error on a ResNet-50
            # (min cosine 0.9999998 on them, 0.9997 on real images; RESULTS.md, gpu_embed_bench)
            real = run_images(model, run, n=32)
            if model.has_text and not int8_text:
                to_fp16(tmp / "text.onnx")
        if int8_text:
            stage("quantising the text tower to int8")
            int8 = (int8 or {}) | quantize_text(model, tmp / "text.onnx", calibration_texts(model, run))
        for graph in [*towers, "image_dense"]:
            external_weights(tmp / f"{graph}.onnx")
        if model.has_text:
            model.tokenizer.save_pretrained(tmp)
            for extra in ("special_tokens_map.json", "vocab.txt"):
                (tmp / extra).unlink(missing_ok=True)  # tokenizer.json is the one file the fast path reads
        pre = preprocess_spec(model)
        write_json(tmp / "preprocess.json", pre)
        fingerprint = weights_fingerprint(run)
        manifest = {"format": 1, "preset": model.cfg.name, "source_run": str(run.resolve()),
                    "fingerprint": fingerprint, "dim": model.dim, "opset": opset, "towers": towers,
                    "precision": {"image": variant.image} | ({"text": variant.text} if model.has_text else {}),
                    "text_graph": text_graph,
                    "inputs": {"image": "pixels float32 [batch, C, S, S]"} | (
                        {"text": "input_ids, attention_mask int64 [batch, seq]"} if model.has_text else {}),
                    "output": "embeds float32 [batch, dim], L2-normalised",
                    "dense": {"graph": "image_dense.onnx", "precision": "fp32",
                              "outputs": "embeds [batch, dim], cells float32 [batch, h, w, dim], L2-normalised"},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
                    "warnings": run_warnings(run)}
        if int8 is not None:
            manifest["int8"] = int8
        write_json(tmp / "manifest.json", manifest)
        stage("checking parity against torch")
        manifest["parity"] = check_parity(model, tmp, variant, seed, real)
        write_json(tmp / "manifest.json", manifest)
    return out, manifest


class ClassifierGraph(nn.Module):
    """pixels -> (scores [B, K]: probabilities or regression values, features [B, F]: the tower's pooled output)."""

    def __init__(self, model: ImageClassifier):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.tower(pixels)
        return scores_from_logits(self.model.task, self.model.head(feats)), feats


def export_classifier_onnx(path: Path, out: Path | None = None, fp16: bool = False, opset: int = 18,
                           seed: int = 0, on_stage: Callable[[str], None] | None = None,
                           wait: bool = False) -> tuple[Path, dict]:
    """A classifier saved by `convirt finetune` -> classifier.onnx (tower + head in one graph), preprocess.json
    and manifest.json (task, label names), parity-checked against torch like the encoders."""
    stage = on_stage or (lambda s: None)
    path = Path(path)
    out = Path(out) if out is not None else path / "onnx"
    check_folder(out, "export", inputs=[path / "classifier.json"])
    stage("loading the classifier")
    model = load_classifier(path).eval()
    im = model.image_cfg
    with owned_dir(out, "export", wait) as tmp:
        stage("exporting classifier.onnx")
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        _onnx_export(ClassifierGraph(model).eval(), (torch.randn(2, im.in_chans, im.image_size, im.image_size),),
                     tmp / "classifier.onnx", ["pixels"], opset, ("scores", "features"), dynamo=True,
                     dynamic_shapes={"pixels": {0: batch}})
        if fp16:
            stage("converting to fp16")
            to_fp16(tmp / "classifier.onnx")
        write_json(tmp / "preprocess.json", im.preprocess.to_json())  # what finetune decoded with: the tower's
        manifest = {"format": 1, "kind": "classifier", "task": model.task, "label_names": model.label_names,
                    "source": str(path.resolve()), "fingerprint": weights_fingerprint(path), "opset": opset,
                    "precision": "fp16" if fp16 else "fp32", "num_features": model.tower.num_features,
                    "inputs": "pixels float32 [batch, C, S, S]",
                    "outputs": {"scores": "sigmoid (multilabel) / softmax (multiclass) probabilities, or the "
                                          "regression value, float32 [batch, K]",
                                "features": "image tower output float32 [batch, F]"},
                    "trained": read_json(path / "classifier.json").get("meta", {}),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__}
        stage("checking parity against torch")
        manifest["parity"] = check_classifier_parity(model, tmp / "classifier.onnx", fp16, seed)
        write_json(tmp / "manifest.json", manifest)
    return out, manifest


def check_classifier_parity(model: ImageClassifier, graph: Path, fp16: bool, seed: int = 0, n: int = 24) -> dict:
    """onnxruntime vs torch on fresh smooth random images in batches of 5: scores must agree."""
    import onnxruntime as ort

    pixels = random_pixels(model.image_cfg, np.random.default_rng(seed), n)
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(["scores"], {"pixels": pixels[i:i + 5]})[0] for i in range(0, n, 5)])
    with torch.no_grad():
        ref = model.predict(torch.from_numpy(pixels)).numpy()
    scale = float(np.abs(ref).max()) if model.task == "regression" else 1.0
    diff = float(np.abs(ref - got).max()) / max(scale, 1e-12)
    limit = 1e-2 if fp16 else 1e-4
    report = {"precision": "fp16" if fp16 else "fp32", "max_abs_diff": diff, "images": n,
              "relative": model.task == "regression"}
    if not diff <= limit:
        raise ConvirtError(f"export parity check failed, nothing written: classifier scores max|diff| {diff:.3g} "
                           f"(want <= {limit:g})")
    return report
