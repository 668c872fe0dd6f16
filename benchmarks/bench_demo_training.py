"""The demo's training compute: today's defaults beside the previous ones (U-Net bc16, batch 8 per
worker, 8 epochs), per training image and per run, on one CPU thread (what each DDP worker gets on a
2-core machine). Rounds alternate between the two so that load changes hit both alike.

Usage: python benchmarks/bench_demo_training.py [--rounds 3]
Prints seconds per image of each, their ratio, and the ratio of a whole run's training compute
(per image x epochs); per-epoch overheads (Ray Data start-up, validation, checkpoints) come on top.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from roadseg_dist.demo import DemoSettings
    from roadseg_dist.models.zoo import build_model
    from roadseg_dist.train import losses

    torch.set_num_threads(1)
    now = DemoSettings()
    configs = {"previous (bc16, batch 8, 8 epochs)": (16, 8, 8, losses.cross_entropy),
               f"today (bc{now.base_channels}, batch {now.batch_size}, {now.epochs} epochs, {now.loss})":
                   (now.base_channels, now.batch_size, now.epochs,
                    losses.build_criterion(now.loss, ohem_min_kept=now.ohem_min_kept))}
    images = 8  # per round and config: a multiple of both batch sizes
    h, w = now.crop
    per_image = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (bc, batch, _, criterion) in configs.items():
            torch.manual_seed(0)
            model = build_model("unet", base_channels=bc)
            opt = torch.optim.AdamW(model.parameters())
            x, y = torch.randn(batch, 3, h, w), torch.randint(0, 19, (batch, h, w))
            t0 = time.perf_counter()
            for _ in range(images // batch):
                loss_sum, norm = criterion(model(x), y)
                opt.zero_grad()
                (loss_sum / norm).backward()
                opt.step()
            per_image[name].append((time.perf_counter() - t0) / images)
    (old, (_, _, old_epochs, _)), (new, (_, _, new_epochs, _)) = configs.items()
    best = {name: min(v) for name, v in per_image.items()}
    for name, v in per_image.items():
        print(f"{name:<50} {best[name]:.3f} s/image (rounds: {', '.join(f'{t:.3f}' for t in v)})")
    print(f"per image, today / previous            : {best[new] / best[old]:.2f}")
    print(f"training compute of a run, today / prev: {best[new] * new_epochs / (best[old] * old_epochs):.2f}")


if __name__ == "__main__":
    main()
