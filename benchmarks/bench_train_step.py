"""Price of DyCON per training iteration: full DyCON step vs a plain supervised step, same network and batch.

Both steps run through ``MeanTeacherTrainer`` on the same ``DyCONNet`` (MONAI UNet + projection head) and the same
batch size: the supervised step trains on ``B`` labeled patches (Dice+CE only, no teacher); the DyCON step on
``B/2`` labeled + ``B/2`` unlabeled patches with the EMA teacher forward on a noised view, UnCL, FeCL on the
``k^3`` patch grid (embedding 256, top-K hard negatives, entropy weights) and the EMA update. Each mode runs in its
own subprocess of this run (so peak memory is measured per mode) and the script prints seconds per iteration, peak
memory and the DyCON / supervised ratios.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the timed iterations; on CPU, the growth of the
process's peak resident set size (``ru_maxrss``) over its size after setup.

Usage::

    python benchmarks/bench_train_step.py                 # batch 4 (2+2), 96x96x64, UNet(16..256), grid 16
    python benchmarks/bench_train_step.py --quick         # small smoke run (32^3, UNet(8..64), grid 8)
    python benchmarks/bench_train_step.py --device cuda --amp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``args.iters`` iterations of one mode in this process."""
    import torch
    from ignite.engine import Events
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from dycon_monai.engines import MeanTeacherTrainer, method_weights
    from dycon_monai.losses import FeCLLoss, UnCLLoss
    from dycon_monai.networks import DyCONNet

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    channels = tuple(args.channels)
    backbone = UNet(3, 1, 2, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=2)
    net = DyCONNet(backbone, embedding_dim=args.embedding_dim).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    patch = tuple(args.patch)
    n_lab = args.batch if args.mode == "supervised" else args.batch // 2
    n_unl = args.batch - n_lab
    total = args.warmup + args.iters

    def batch(n: int, labeled: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"image": torch.randn(n, 1, *patch), "case_id": [f"c{i}" for i in range(n)]}
        if labeled:
            item["label"] = (torch.rand(n, 1, *patch) > 0.9).float()
        return item

    labeled = [batch(n_lab, True)] * total
    unlabeled = [batch(n_unl, False)] * total if n_unl else None
    weights = method_weights("supervised" if args.mode == "supervised" else "dycon")
    trainer = MeanTeacherTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=labeled,
        network=net,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        unlabeled_data_loader=unlabeled,
        uncl_loss=UnCLLoss(),
        fecl_loss=FeCLLoss(gamma=0.5, grid_size=args.grid),
        amp=args.amp,
        decollate=False,
        **weights,
    )
    cuda = device.type == "cuda"
    times: list[float] = []
    marks: dict[str, float] = {}

    def _sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def _start(engine: MeanTeacherTrainer) -> None:
        if engine.state.iteration == args.warmup + 1:
            _sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            marks["base_alloc"] = torch.cuda.memory_allocated(device) if cuda else 0.0
        _sync()
        marks["t0"] = time.perf_counter()

    def _end(engine: MeanTeacherTrainer) -> None:
        _sync()
        if engine.state.iteration > args.warmup:
            times.append(time.perf_counter() - marks["t0"])

    trainer.add_event_handler(Events.ITERATION_STARTED, _start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _end)
    rss_before = _rss_mb()
    trainer.run()
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated(device) - marks["base_alloc"]) / 2**20
    else:
        peak_mb = _peak_rss_mb() - rss_before
    times.sort()
    return {
        "mode": args.mode,
        "s_per_iter_median": times[len(times) // 2],
        "s_per_iter_mean": sum(times) / len(times),
        "peak_extra_mb": peak_mb,
        "labeled": n_lab,
        "unlabeled": n_unl,
        "device": _device_name(args.device),
        "losses": {k: round(v, 4) for k, v in trainer.state.loss_terms.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke-run sizes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="total batch (DyCON: half labeled, half unlabeled)")
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="default 96 96 64 (quick: 32 32 32)")
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="default 16 32 64 128 256")
    parser.add_argument("--embedding-dim", type=int, default=None, help="default 256 (quick: 32)")
    parser.add_argument("--grid", type=int, default=None, help="FeCL grid k (default 16, quick: 8)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 5, quick: 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--mode", choices=("supervised", "dycon"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.patch = args.patch or ([32, 32, 32] if quick else [96, 96, 64])
    args.channels = args.channels or ([8, 16, 32, 64] if quick else [16, 32, 64, 128, 256])
    args.embedding_dim = args.embedding_dim or (32 if quick else 256)
    args.grid = args.grid or (8 if quick else 16)
    args.iters = args.iters or (3 if quick else 5)
    if quick:
        args.warmup = min(args.warmup, 1)
    if args.batch < 2:
        parser.error("--batch must be >= 2 (DyCON splits it into labeled and unlabeled halves)")

    if args.mode is not None:  # child process
        print(json.dumps(run_mode(args)))
        return 0

    results = {}
    for mode in ("supervised", "dycon"):
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--device", args.device]
        cmd += ["--batch", str(args.batch), "--patch", *map(str, args.patch), "--channels", *map(str, args.channels)]
        cmd += ["--embedding-dim", str(args.embedding_dim), "--grid", str(args.grid), "--iters", str(args.iters)]
        cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)] + (["--amp"] if args.amp else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            return proc.returncode
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])

    sup, dyc = results["supervised"], results["dycon"]
    print(
        f"device: {dyc['device']} | batch {args.batch} (DyCON {dyc['labeled']}+{dyc['unlabeled']}), patch "
        f"{'x'.join(map(str, args.patch))}, UNet{tuple(args.channels)}, embedding {args.embedding_dim}, grid "
        f"{args.grid}^3, amp={args.amp}, {args.iters} timed iterations after {args.warmup} warm-up"
    )
    print(f"{'step':<12}{'s/iter (median)':>18}{'s/iter (mean)':>16}{'peak extra MB':>16}")
    for name, r in (("supervised", sup), ("dycon", dyc)):
        print(f"{name:<12}{r['s_per_iter_median']:>18.3f}{r['s_per_iter_mean']:>16.3f}{r['peak_extra_mb']:>16.1f}")
    time_ratio = dyc["s_per_iter_median"] / sup["s_per_iter_median"]
    mem_ratio = dyc["peak_extra_mb"] / sup["peak_extra_mb"] if sup["peak_extra_mb"] > 0 else float("nan")
    print(f"ratio dycon/supervised: time {time_ratio:.2f}x, peak memory {mem_ratio:.2f}x")
    print(json.dumps({"args": vars(args), "results": results, "time_ratio": time_ratio, "memory_ratio": mem_ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
