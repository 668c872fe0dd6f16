"""CPU inference speed of the zoo models: eager PyTorch beside their TorchScript and ONNX Runtime exports.

    .venv/bin/python benchmarks/bench_models.py [--models unet,unet-resnet18,unet-mobilenet_v2]
                                                [--size 256x448] [--repeats 3] [--threads 2]

For each model, in one run: save a checkpoint, export it with `export_checkpoint` (which checks
parity), then time a batch-1 forward at --size with eager torch, the TorchScript file and the ONNX
file under onnxruntime (median of --repeats after one warm-up). Prints frames/s, the speed-up over
eager, the GFLOPs per frame at that size (model_info's meta-device count, scaled by pixels) and the
prototype's 0.14 frames/s at 720x1280 converted to this size, for scale. Random weights: speed only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, ONNX Runtime graph optimisation, TorchScript profiling runs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet,unet-resnet18,unet-mobilenet_v2")
    parser.add_argument("--size", default="256x448")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # torch.jit / tracer deprecation notes would break the table

    import onnxruntime as ort
    import torch

    from roadseg_dist import build_model
    from roadseg_dist.models import zoo
    from roadseg_dist.models.checkpoint import save_checkpoint
    from roadseg_dist.models.export import export_checkpoint

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    x = torch.randn(1, 3, h, w)
    scale = (h * w) / (720 * 1280)
    print(f"CPU, {args.threads} threads, batch 1, {h}x{w}; median of {args.repeats} after a warm-up")
    print(f"prototype (31M U-Net, 720x1280): 0.14 frames/s = {0.14 / scale:.2f} frames/s at this size\n")
    header = f"{'model':22s} {'GFLOPs':>7s} {'eager f/s':>10s} {'torchscript':>12s} {'onnxruntime':>12s}  max|diff|"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = build_model(name).eval()
            ckpt = os.path.join(tmp, name, "ckpt")
            save_checkpoint(ckpt, model)
            ts_path, onnx_path = os.path.join(tmp, name, "m.pt"), os.path.join(tmp, name, "m.onnx")
            diffs = [export_checkpoint(ckpt, ts_path, "torchscript")["max_abs_diff"],
                     export_checkpoint(ckpt, onnx_path, "onnx")["max_abs_diff"]]
            scripted = torch.jit.load(ts_path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            feed = {"image": x.numpy()}
            with torch.no_grad():
                eager = median_seconds(lambda: model(x), args.repeats)
                script = median_seconds(lambda: scripted(x), args.repeats)
            onnx_s = median_seconds(lambda: session.run(["logits"], feed), args.repeats)
            gflops = zoo.model_info(name)["gflops_720x1280"] * scale
            print(f"{name:22s} {gflops:7.1f} {1 / eager:10.2f} {1 / script:7.2f} x{eager / script:3.1f}"
                  f" {1 / onnx_s:7.2f} x{eager / onnx_s:3.1f}  {max(diffs):.1e}")


if __name__ == "__main__":
    main()
