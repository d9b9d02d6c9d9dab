"""CPU inference paths of a stored version's forward, side by side in one run (issue #24, item 4).

    python -m bench.infer_paths [--photos 8] [--config single dense detseg] [--net small] [--runs 3]

The forward is ``model.predict`` (activated outputs) of the initial version of ``--net`` that /setup publishes
for each labeling config of :mod:`bench.rank_photo` (``single``: one brush tag; ``dense``: PAD-Net semantic +
depth + normals; ``detseg``: brush + rectangles), on CamVid photos (480x360, decoded and fitted as the
ranking does: a 384x512 input; generated photos without ../shared), in batches of ``--batch`` (8: what
/predict's ``FORWARD_PIXELS`` allows at this size), one torch thread. Paths:

- ``eager``: today's ranking forward (``torch.no_grad``), the reference of every ratio and difference;
- ``inference``: ``torch.inference_mode`` (today's /predict forward);
- ``channels_last``: ``torch.inference_mode`` with the network and its input in channels-last memory format;
- ``bf16``: ``torch.inference_mode`` + ``torch.autocast("cpu", torch.bfloat16)`` (fast only on CPUs with
  avx512_bf16 / AMX: the ``# cpu`` line says whether this one has them);
- ``ort``: ONNX Runtime 1 thread on the network exported by ``torch.onnx.export`` (TorchScript exporter,
  fixed input shape: the PAD-Net fusion's adaptive pooling does not export with dynamic sizes); skipped with the
  reason when ``onnxruntime`` is not importable or the export fails.

Prints per config, net and path ``METRIC infer_speedup_<path>_<config>_<net>`` (eager time / path time, medians
of ``--runs`` alternating runs; issue #24 keeps a path only at >= 1.3 on /predict and ranking, which the bare
forward bounds) and ``METRIC infer_maxdiff_<path>_<config>_<net>`` (the largest absolute difference from the
eager outputs over dense modalities: probabilities, depth in metres, unit normals).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from backend.serving.model import MTALModel
from backend.serving.store import ModelStore
from backend.settings import Settings
from bench.rank_photo import CONFIGS, _inputs, photos

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]
PATHS = ("eager", "inference", "channels_last", "bf16", "ort")


def cpu_bf16() -> str:
    """The lscpu flags that make bfloat16 fast (avx512_bf16, amx_bf16), or "none"."""
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    have = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags.split()]
    return " ".join(have) or "none"


def stored_model(config: str, net: str, root: Path, image_size: int = 384) -> torch.nn.Module:
    """The initial version /setup publishes for ``config`` with ``--net``, loaded from the store, eval mode."""
    settings = Settings(model_dir=root / "models", net_config=net, image_size=image_size, device="cpu", clusters=0)
    store = ModelStore(settings.model_dir, device="cpu")
    MTALModel("1", CONFIGS[config], settings, store).setup()
    return store.load_model("1").model.eval()


def paths(model: torch.nn.Module, example: torch.Tensor, root: Path) -> dict[str, Forward | str]:
    """path name -> forward over a batch [B, 3, H, W] (or the reason it is unavailable)."""
    def eager(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return model.predict(x)

    def inference(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return model.predict(x)

    last = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def channels_last(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return last.predict(x.contiguous(memory_format=torch.channels_last))

    def bf16(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return {k: v.float() for k, v in model.predict(x).items()}

    return {"eager": eager, "inference": inference, "channels_last": channels_last, "bf16": bf16,
            "ort": _ort(model, example, root)}


def _ort(model: torch.nn.Module, example: torch.Tensor, root: Path) -> Forward | str:
    """ONNX Runtime (1 thread) on ``model`` exported for ``example``'s shape (every output, detections too:
    traced, so their box count is the example's)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime not importable ({e})"

    names = list(model.modalities)

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.net.predict(x)
            return tuple(out[k] for k in names)

    path = root / "model.onnx"
    try:
        torch.onnx.export(Outputs().eval(), (example,), str(path), dynamo=False, input_names=["images"],
                          output_names=names, opset_version=17)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - a benchmark reports why a path is missing
        return f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in zip(names, session.run(None, {"images": x.numpy()}), strict=True)}

    return run


def measure(config: str, net: str, inputs: torch.Tensor, batch: int, runs: int, image_size: int = 384
            ) -> dict[str, Any]:
    """Median time of every available path over ``inputs`` in batches (the paths' order rotated every run),
    max |output - eager| over dense outputs, and whether the detections ([B, K, 6 + C]) match within 1e-3."""
    chunks = [inputs[b:b + batch] for b in range(0, len(inputs), batch)]
    with tempfile.TemporaryDirectory(prefix="infer-paths-") as d:
        model = stored_model(config, net, Path(d), image_size)
        dense = [k for k, s in model.modalities.items() if s.dense]
        dets = [k for k, s in model.modalities.items() if not s.dense]
        available = paths(model, chunks[0], Path(d))
        ready = {n: f for n, f in available.items() if not isinstance(f, str)}
        if any(len(c) != len(chunks[0]) for c in chunks) and "ort" in ready:  # exported for one batch shape
            chunks = chunks[:-1] if len(chunks) > 1 else chunks
        reference = [ready["eager"](c) for c in chunks]
        diff, boxes, skipped = {}, {}, {n: f for n, f in available.items() if isinstance(f, str)}
        for name, f in list(ready.items()):
            try:
                outs = [f(c) for c in chunks]  # also the warm-up
            except Exception as e:  # noqa: BLE001 - e.g. a traced graph that bakes in a box count
                skipped[name] = f"run failed: {type(e).__name__}: {str(e).splitlines()[0][-200:]}"
                del ready[name]
                continue
            pairs = list(zip(outs, reference, strict=True))
            diff[name] = max(float((o[k].float() - r[k].float()).abs().max()) for o, r in pairs for k in dense)
            boxes[name] = all(o[k].shape == r[k].shape and torch.allclose(o[k].float(), r[k].float(), atol=1e-3)
                              for o, r in pairs for k in dets)
        times: dict[str, list[float]] = {n: [] for n in ready}
        order = list(ready)
        for i in range(runs):
            for name in order[i % len(order):] + order[:i % len(order)]:
                f = ready[name]
                t0 = time.perf_counter()
                for c in chunks:
                    f(c)
                times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {"images": sum(len(c) for c in chunks), "time": med, "diff": diff, "boxes": boxes if dets else {},
            "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.infer_paths", description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=8, help="photos per run (default 8)")
    ap.add_argument("--batch", type=int, default=8, help="images per forward (default 8)")
    ap.add_argument("--config", nargs="+", default=["single", "dense", "detseg"], choices=sorted(CONFIGS))
    ap.add_argument("--net", nargs="+", default=["small"], choices=["tiny", "small", "default"])
    ap.add_argument("--runs", type=int, default=3, help="alternating timed runs per path (median)")
    ap.add_argument("--image-size", type=int, default=384, help="MTAL_IMAGE_SIZE (default 384)")
    ap.add_argument("--size", default="360x480", help="photo HxW (CamVid's 360x480 by default; else generated)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    h, w = (int(v) for v in args.size.split("x"))
    jpegs, source = photos(args.photos, (h, w))
    settings = Settings(image_size=args.image_size, device="cpu")
    inputs = _inputs(jpegs, settings)
    print(f"# cpu: bf16 flags: {cpu_bf16()}; torch {torch.__version__}, 1 thread; {len(jpegs)} {source} photos "
          f"{w}x{h} -> input {inputs.shape[2]}x{inputs.shape[3]}, batches of {args.batch}", flush=True)
    for config in args.config:
        for net in args.net:
            r = measure(config, net, inputs, args.batch, args.runs, args.image_size)
            tag = f"{config}_{net}"
            eager = r["time"]["eager"]
            print(f"# {tag}: {r['images']} images, " + ", ".join(
                f"{n} {t * 1e3 / r['images']:.0f} ms/img" for n, t in r["time"].items()), flush=True)
            for name, why in r["skipped"].items():
                print(f"# {tag}: {name} skipped: {why}", flush=True)
            for name, t in r["time"].items():
                if name == "eager":
                    continue
                print(f"METRIC infer_speedup_{name}_{tag}={eager / t:.2f}", flush=True)
                print(f"METRIC infer_maxdiff_{name}_{tag}={r['diff'][name]:.2g}", flush=True)
                if name in r["boxes"]:
                    print(f"# {tag}: {name} detections equal to eager's within 1e-3: {r['boxes'][name]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
