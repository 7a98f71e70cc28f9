"""Price of DyCON per training iteration: supervised, Mean-Teacher, DyCON and co-training steps, same batch.

Both steps run through ``MeanTeacherTrainer`` on the same ``DyCONNet`` (MONAI UNet + projection head) and the same
batch size: the supervised step trains on ``B`` labeled patches (Dice+CE only, no teacher); the DyCON step on
``B/2`` labeled + ``B/2`` unlabeled patches with the EMA teacher forward on a noised view, UnCL, FeCL on the
``k^3`` patch grid (embedding 256, top-K hard negatives, entropy weights) and the EMA update. Each mode runs in its
own subprocess of this run (so peak memory is measured per mode) and the script prints seconds per iteration, peak
memory and the ratios against the supervised and the Mean-Teacher step.

``dycon_floor`` is the DyCON step with FeCL replaced by its floor (``fecl_floor.py`` beside this script: only the
matrix products and exponentials FeCL cannot skip, value 0): every other part is DyCON's own (projection head in
both forwards, UnCL, the teacher on the unlabeled half, the EMA update), so its ratio to Mean-Teacher is the lowest
a DyCON step with this network and head can reach, however fast FeCL becomes.

The co-training modes (``cps``, ``cps_dycon``, ``dual_cce``) run ``CoTrainingTrainer`` on the same batch: ``cps`` and
``cps_dycon`` on two instances of the same ``DyCONNet``, ``dual_cce`` on seed 003's pair (ResNet34 ``FlexibleUNet``
+ ``VNet``, decoder taps, embedding 64; every patch side a multiple of 32). ``--modes`` picks a subset.

``--breakdown`` also profiles as many further iterations per mode (``torch.profiler``, CPU activities) and splits the
step into the trainer's named ranges (``dycon/...``: student forward, teacher forward, UnCL, FeCL, backward,
consistency, optimiser step, EMA update, unlabeled batch, and the projection head inside the forwards) plus the wait for the
labeled batch (Ignite's ``GET_BATCH_STARTED`` .. ``GET_BATCH_COMPLETED``); "other" is the rest of the step. Times
under the profiler are a little longer than without it, so the shares come from the profiled iterations and the
ratios from the plain ones. ``--plot FILE.png`` draws the breakdown as a bar chart.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the timed iterations; on CPU, the growth of the
process's peak resident set size (``ru_maxrss``) over its size after setup.

Usage::

    python benchmarks/bench_train_step.py                 # batch 4 (2+2), 96x96x64, UNet(16..256), grid 16
    python benchmarks/bench_train_step.py --quick         # small smoke run (32^3, UNet(8..64), grid 8)
    python benchmarks/bench_train_step.py --breakdown --plot breakdown.png
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

MT_MODES = ("supervised", "mean_teacher", "dycon", "dycon_floor")
CO_MODES = ("cps", "cps_dycon", "dual_cce")


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


def fecl_floor_module():
    """``fecl_floor.py`` beside this script, imported by its path (the benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().with_name("fecl_floor.py")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``args.iters`` iterations of one mode in this process."""
    import torch
    from ignite.engine import Events
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from dycon_monai.engines import CoTrainingTrainer, MeanTeacherTrainer, co_training_weights, method_weights
    from dycon_monai.losses import FeCLLoss, UnCLLoss
    from dycon_monai.networks import DyCONNet

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    channels = tuple(args.channels)

    def unet() -> DyCONNet:
        backbone = UNet(3, 1, 2, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=2)
        return DyCONNet(backbone, embedding_dim=args.embedding_dim).to(device)

    co_training = args.mode in CO_MODES
    if args.mode == "dual_cce":
        from monai.networks.nets import FlexibleUNet, VNet

        a = FlexibleUNet(1, 2, backbone="resnet34", pretrained=False, spatial_dims=3)
        net = DyCONNet(a, "decoder.blocks.3", 32, embedding_dim=64).to(device)
        net_b = DyCONNet(VNet(3, 1, 2), "decoder", embedding_dim=64).to(device)
    else:
        net = unet()
        net_b = unet() if co_training else None
    params = list(net.parameters()) + (list(net_b.parameters()) if net_b is not None else [])
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)

    patch = tuple(args.patch)
    n_lab = args.batch if args.mode == "supervised" else args.batch // 2  # Mean-Teacher and DyCON: half and half
    n_unl = args.batch - n_lab
    total = args.warmup + args.iters * (2 if args.breakdown else 1)

    def batch(n: int, labeled: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"image": torch.randn(n, 1, *patch), "case_id": [f"c{i}" for i in range(n)]}
        if labeled:
            item["label"] = (torch.rand(n, 1, *patch) > 0.9).float()
        return item

    labeled = [batch(n_lab, True)] * total
    unlabeled = [batch(n_unl, False)] * total if n_unl else None
    common = {
        "device": device,
        "max_epochs": 1,
        "train_data_loader": labeled,
        "network": net,
        "optimizer": opt,
        "loss_function": DiceCELoss(to_onehot_y=True, softmax=True),
        "unlabeled_data_loader": unlabeled,
        "uncl_loss": UnCLLoss(),
        "fecl_loss": (fecl_floor_module().FloorFeCLLoss if args.mode == "dycon_floor" else FeCLLoss)(
            gamma=0.5, grid_size=args.grid
        ),
        "amp": args.amp,
        "decollate": False,
        "compile": getattr(args, "compile", False),
    }
    if co_training:
        weights = co_training_weights(args.mode, cps_rampup=0)
        trainer = CoTrainingTrainer(network_b=net_b, **common, **weights)
    else:
        trainer = MeanTeacherTrainer(**common, **method_weights(args.mode.replace("_floor", "")))
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

    plain_end = args.warmup + args.iters
    profiled: list[float] = []
    batch_waits: list[float] = []
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.breakdown else None

    def _end(engine: MeanTeacherTrainer) -> None:
        _sync()
        it = engine.state.iteration
        if args.warmup < it <= plain_end:
            times.append(time.perf_counter() - marks["t0"])
        elif it > plain_end:
            profiled.append(time.perf_counter() - marks["t0"] + marks.get("wait", 0.0))
        if profiler is not None and it == plain_end:
            profiler.start()  # the next iterations are the profiled ones

    def _batch_start(engine: MeanTeacherTrainer) -> None:
        marks["b0"] = time.perf_counter()

    def _batch_end(engine: MeanTeacherTrainer) -> None:
        marks["wait"] = time.perf_counter() - marks["b0"]
        if engine.state.iteration >= plain_end:  # the batch of the next, profiled, iteration
            batch_waits.append(marks["wait"])

    first: dict[str, float] = {}
    trainer.add_event_handler(Events.STARTED, lambda _: first.setdefault("t0", time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda _: first.setdefault("t1", time.perf_counter()))
    trainer.add_event_handler(Events.ITERATION_STARTED, _start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, _end)
    trainer.add_event_handler(Events.GET_BATCH_STARTED, _batch_start)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, _batch_end)
    rss_before = _rss_mb()
    trainer.run()
    breakdown = None
    if profiler is not None:
        profiler.stop()
        n = max(len(profiled), 1)
        parts = {"data_labeled": sum(batch_waits) / n}
        for event in profiler.key_averages():
            if event.key.startswith("dycon/"):
                parts[event.key[len("dycon/") :]] = event.cpu_time_total / 1e6 / n
        step = sum(profiled) / n
        top = sum(v for k, v in parts.items() if k != "projection_head")
        parts["other"] = max(step - top, 0.0)
        breakdown = {"s_per_iter_profiled": step, "parts_s": parts}
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated(device) - marks["base_alloc"]) / 2**20
    else:
        peak_mb = _peak_rss_mb() - rss_before
    times.sort()
    return {
        "mode": args.mode + ("+compile" if getattr(args, "compile", False) else ""),
        "first_iter_s": first["t1"] - first["t0"],
        "s_per_iter_median": times[len(times) // 2],
        "s_per_iter_mean": sum(times) / len(times),
        "peak_extra_mb": peak_mb,
        "labeled": n_lab,
        "unlabeled": n_unl,
        "device": _device_name(args.device),
        "losses": {k: round(v, 4) for k, v in trainer.state.loss_terms.items()},
        "breakdown": breakdown,
    }


_PART_ORDER = (
    "data_labeled",
    "data_unlabeled",
    "student_forward",
    "teacher_forward",
    "network_a_forward",
    "network_b_forward",
    "projection_head",
    "loss_sup",
    "loss_cr",
    "loss_cps",
    "loss_efs",
    "loss_une",
    "loss_pgl",
    "loss_uncl",
    "loss_fecl",
    "loss_consistency",
    "backward",
    "optimizer_step",
    "ema_update",
    "other",
)


def print_breakdown(results: dict[str, dict[str, Any]]) -> None:
    """One table: per part and mode, seconds per iteration and share of the profiled step."""
    modes = [m for m in results if results[m].get("breakdown")]
    print("breakdown (profiled iterations; projection_head is inside the two forwards, not added to the total)")
    print(f"{'part':<18}" + "".join(f"{m:>24}" for m in modes))
    for part in _PART_ORDER:
        cells = []
        for m in modes:
            b = results[m]["breakdown"]
            v = b["parts_s"].get(part)
            cells.append(f"{'-':>24}" if v is None else f"{v:>12.3f} s {100 * v / b['s_per_iter_profiled']:>7.1f} %")
        print(f"{part:<18}" + "".join(cells))
    print(
        f"{'step':<18}" + "".join(f"{results[m]['breakdown']['s_per_iter_profiled']:>12.3f} s {'':>9}" for m in modes)
    )


def plot_breakdown(results: dict[str, dict[str, Any]], path: str) -> None:
    """Stacked horizontal bars of the breakdown, one bar per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in results if results[m].get("breakdown")]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.7 * len(modes)))
    for row, m in enumerate(modes):
        left = 0.0
        for i, part in enumerate(p for p in _PART_ORDER if p != "projection_head"):
            v = results[m]["breakdown"]["parts_s"].get(part, 0.0)
            ax.barh(row, v, left=left, color=plt.cm.tab20(i), label=part if row == 0 else None)
            left += v
    ax.set_yticks(range(len(modes)), modes)
    ax.set_xlabel("seconds per iteration (profiled)")
    ax.legend(ncol=4, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    from dycon_monai.utils.io import atomic_save_figure

    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)
    print(f"bar chart: {path}")


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
    parser.add_argument("--breakdown", action="store_true", help="also profile and split each step into its parts")
    parser.add_argument("--plot", default=None, help="with --breakdown: write a bar chart PNG here")
    parser.add_argument(
        "--modes", nargs="+", choices=MT_MODES + CO_MODES, default=list(MT_MODES + CO_MODES), help="steps to time"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time every mode with the trainers' compile=True (torch.compile, MONAI's SupervisedTrainer path)",
    )
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MT_MODES + CO_MODES, help=argparse.SUPPRESS)
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
        args.compile = args.compiled
        print(json.dumps(run_mode(args)))
        return 0

    modes = [m for m in MT_MODES + CO_MODES if m in args.modes or m in ("supervised", "mean_teacher")]
    results = {}
    runs = [(m, False) for m in modes] + ([(m, True) for m in modes] if args.compile else [])
    for mode, compiled in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--device", args.device]
        cmd += ["--batch", str(args.batch), "--patch", *map(str, args.patch), "--channels", *map(str, args.channels)]
        cmd += ["--embedding-dim", str(args.embedding_dim), "--grid", str(args.grid), "--iters", str(args.iters)]
        cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads)] + (["--amp"] if args.amp else [])
        cmd += ["--breakdown"] if args.breakdown else []
        cmd += ["--compiled"] if compiled else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            return proc.returncode
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results[result["mode"]] = result

    sup, mt = results["supervised"], results["mean_teacher"]
    print(
        f"device: {mt['device']} | batch {args.batch} (semi-supervised {mt['labeled']}+{mt['unlabeled']}), patch "
        f"{'x'.join(map(str, args.patch))}, UNet{tuple(args.channels)}, embedding {args.embedding_dim}, grid "
        f"{args.grid}^3, amp={args.amp}, {args.iters} timed iterations after {args.warmup} warm-up"
    )
    print(
        f"{'step':<22}{'s/iter (median)':>18}{'s/iter (mean)':>16}{'peak extra MB':>16}{'time / MT':>11}{'mem / MT':>10}"
    )
    ratios: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        t = r["s_per_iter_median"] / mt["s_per_iter_median"]
        m = r["peak_extra_mb"] / mt["peak_extra_mb"] if mt["peak_extra_mb"] > 0 else float("nan")
        ratios[name] = {"time_vs_mean_teacher": t, "memory_vs_mean_teacher": m}
        print(
            f"{name:<22}{r['s_per_iter_median']:>18.3f}{r['s_per_iter_mean']:>16.3f}{r['peak_extra_mb']:>16.1f}"
            f"{t:>10.2f}x{m:>9.2f}x"
        )
    summary: dict[str, Any] = {"ratios": ratios}
    compiled = {m[: -len("+compile")]: r for m, r in results.items() if m.endswith("+compile")}
    if compiled:
        print(f"{'compile':<12}{'compiled / eager (median)':>27}{'first iteration: eager':>24}{'compiled':>10}")
        summary["compile"] = {}
        for mode, r in compiled.items():
            eager = results[mode]
            ratio = r["s_per_iter_median"] / eager["s_per_iter_median"]
            summary["compile"][mode] = {
                "time_ratio": ratio,
                "memory_ratio": r["peak_extra_mb"] / eager["peak_extra_mb"],
            }
            print(f"{mode:<12}{ratio:>26.2f}x{eager['first_iter_s']:>23.1f}s{r['first_iter_s']:>9.1f}s")
    if "dycon" in results:
        dyc = results["dycon"]
        time_ratio = dyc["s_per_iter_median"] / sup["s_per_iter_median"]
        mem_ratio = dyc["peak_extra_mb"] / sup["peak_extra_mb"] if sup["peak_extra_mb"] > 0 else float("nan")
        mt_time, mt_mem = ratios["dycon"]["time_vs_mean_teacher"], ratios["dycon"]["memory_vs_mean_teacher"]
        print(f"ratio dycon/supervised: time {time_ratio:.2f}x, peak memory {mem_ratio:.2f}x")
        print(f"ratio dycon/mean_teacher: time {mt_time:.2f}x, peak memory {mt_mem:.2f}x")
        summary.update(time_ratio=time_ratio, memory_ratio=mem_ratio, mt_time_ratio=mt_time, mt_memory_ratio=mt_mem)
    if "dycon_floor" in results:
        floor_ratio = ratios["dycon_floor"]["time_vs_mean_teacher"]
        print(
            f"ratio dycon_floor/mean_teacher (DyCON with FeCL at its floor, the lowest reachable): {floor_ratio:.2f}x"
        )
        summary["floor_mt_time_ratio"] = floor_ratio
    if args.breakdown:
        print_breakdown(results)
        if args.plot:
            plot_breakdown(results, args.plot)
    print(json.dumps({"args": vars(args), "results": results, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
