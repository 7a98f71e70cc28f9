"""Forward+backward time and peak extra memory of the DyCON losses against straightforward baselines, as ratios.

- FeCL (paper variant, top-K teacher hard negatives in the denominator, entropy weights) at B=4, D=256,
  N in {1152, 4096}, against the deliberately naive dense implementation the tests use
  (``tests/losses/dense_fecl_reference.py``, imported by path), and against its floor (``fecl_floor.py`` beside this
  script): the work no implementation
  of the paper's loss can skip at the same sizes, in chunks of the same ``chunk`` anchors (student similarities
  ``z z^T``, teacher similarities ``z zt^T`` for the top-K, their exponentials, and the two gradient products
  ``G z`` and ``G^T z``), so ``ours / floor`` says how much is left to gain.
- UnCL at B=8, C=2, 96x96x64 against an unfused, textbook transcription of Eq. 1 (softmax, log(p + eps)).

Each (loss, implementation, size) runs in its own fresh Python process, so that one measurement's freed memory cannot
hide in the next one's baseline. On CPU the peak is the resident set size sampled every millisecond by a background
thread (``/proc/self/statm``) minus the RSS just before the first call; on CUDA it is ``torch.cuda.max_memory_allocated``
minus the allocation before the call, with synchronisation around timed regions. Time is the median of the repeats
after one warm-up call.

Usage::

    python benchmarks/bench_losses.py            # the sizes above (minutes on a 2-core CPU)
    python benchmarks/bench_losses.py --quick    # small sizes, a smoke run of a few seconds
    python benchmarks/bench_losses.py --device cuda --json results.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DENSE_REFERENCE = REPO / "tests" / "losses" / "dense_fecl_reference.py"
FLOOR = Path(__file__).resolve().with_name("fecl_floor.py")


# ----------------------------------------------------------------------------------------------------------------------
# measurement helpers (run inside the worker process)
# ----------------------------------------------------------------------------------------------------------------------
class RssSampler:
    """Samples this process's resident set size from /proc/self/statm in a background thread."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _load_by_path(path: Path):
    """Import a helper module by its file path (``tests/`` and ``benchmarks/`` are not packages)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _make_case(loss: str, impl: str, size: dict, device: str):
    """Returns a zero-argument callable running one forward+backward."""
    import torch

    g = torch.Generator().manual_seed(0)
    if loss == "fecl":
        b, n, d = size["B"], size["N"], size["D"]
        emb = torch.randn(b, n, d, generator=g).to(device).requires_grad_()
        teacher = (emb.detach() + 0.5 * torch.randn(b, n, d, generator=g).to(device)).contiguous()
        labels = (torch.rand(b, n, generator=g) < 0.15).long().to(device)
        entropy = torch.rand(b, n, generator=g).to(device)
        if impl == "floor":
            return _load_by_path(FLOOR).floor_call(emb.detach(), teacher, size.get("chunk", 256))
        if impl in ("ours", "reference"):
            from dycon_monai.losses import FeCLLoss, FeCLReferenceLoss

            if impl == "ours":
                fn = FeCLLoss(gamma=0.5, chunk_size=size.get("chunk", 256))
                return lambda: fn(emb, labels, teacher, entropy).backward()
            ref = FeCLReferenceLoss(gamma=2.0, chunk_size=size.get("chunk", 256))
            return lambda: ref(emb, labels, teacher).backward()  # the released code weights by no entropy
        dense = _load_by_path(DENSE_REFERENCE).dense_paper_fecl
        return lambda: dense(emb, labels, teacher, entropy).backward()

    b, c, sp = size["B"], size["C"], size["spatial"]
    student = torch.randn(b, c, *sp, generator=g).to(device).requires_grad_()
    teacher = torch.randn(b, c, *sp, generator=g).to(device)
    if impl == "ours":
        from dycon_monai.losses import UnCLLoss

        fn = UnCLLoss(beta=1.0)
        return lambda: fn(student, teacher).backward()

    def unfused():
        beta, eps = 1.0, 1e-8
        ps = torch.softmax(student, dim=1)
        pt = torch.softmax(teacher.detach(), dim=1)
        h_s = -(ps * torch.log(ps + eps)).sum(dim=1)
        h_t = -(pt * torch.log(pt + eps)).sum(dim=1)
        dist = ((ps - pt) ** 2).sum(dim=1)
        loss = (dist / (torch.exp(beta * h_s) + torch.exp(beta * h_t))).mean() + beta * (h_s + h_t).mean()
        loss.backward()

    return unfused


def worker(loss: str, impl: str, size: dict, device: str, repeats: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    run = _make_case(loss, impl, size, device)
    times = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for i in range(repeats + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            torch.cuda.synchronize()
            if i:  # the first call is a warm-up
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        sampler = RssSampler()
        base = sampler.rss()
        with sampler:
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                run()
                if i:
                    times.append(time.perf_counter() - t0)
        peak = sampler.peak - base
    return {"time_s": statistics.median(times), "times_s": times, "peak_extra_bytes": int(peak)}


# ----------------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------------
def _spawn(loss: str, impl: str, size: dict, args) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        json.dumps({"loss": loss, "impl": impl, "size": size}),
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker {loss}/{impl} {size} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each worker")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--skip-dense", action="store_true", help="measure only our implementations")
    parser.add_argument(
        "--with-reference", action="store_true", help="also time FeCLReferenceLoss (chunked, checkpointed)"
    )
    parser.add_argument("--only", choices=("fecl", "uncl"), default=None, help="measure one loss only")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(spec["loss"], spec["impl"], spec["size"], args.device, args.repeats, args.threads)))
        return 0

    import torch

    if args.repeats is None:
        args.repeats = 3
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        fecl_sizes = [{"B": 2, "N": 216, "D": 32}, {"B": 2, "N": 512, "D": 32}]
        uncl_sizes = [{"B": 2, "C": 2, "spatial": [24, 24, 16]}]
    else:
        fecl_sizes = [{"B": 4, "N": 1152, "D": 256}, {"B": 4, "N": 4096, "D": 256}]
        uncl_sizes = [{"B": 8, "C": 2, "spatial": [96, 96, 64]}]

    print(f"device: {_device_name(args.device)}; torch {torch.__version__}; repeats {args.repeats} after 1 warm-up")
    print("each measurement runs in a fresh process; time = median forward+backward; memory = peak extra over baseline")
    results = {"device": _device_name(args.device), "torch": torch.__version__, "quick": args.quick, "rows": []}
    for loss, sizes, baseline in (("fecl", fecl_sizes, "dense"), ("uncl", uncl_sizes, "unfused")):
        if args.only and loss != args.only:
            continue
        for size in sizes:
            ours = _spawn(loss, "ours", size, args)
            row = {"loss": loss, "size": size, "ours": ours}
            label = ", ".join(f"{k}={v}" for k, v in size.items())
            line = f"{loss.upper():4s} {label:32s} ours {ours['time_s']:7.3f} s {_mib(ours['peak_extra_bytes'])}"
            if loss == "fecl":
                floor = _spawn(loss, "floor", size, args)
                row["floor"], row["floor_ratio"] = floor, ours["time_s"] / floor["time_s"]
                line += f" | floor {floor['time_s']:7.3f} s, ours / floor {row['floor_ratio']:5.2f}x"
            if not args.skip_dense:
                ref = _spawn(loss, baseline, size, args)
                row[baseline] = ref
                t_ratio = ours["time_s"] / ref["time_s"]
                m_ratio = ours["peak_extra_bytes"] / max(ref["peak_extra_bytes"], 1)
                row["time_ratio"], row["memory_ratio"] = t_ratio, m_ratio
                line += (
                    f" | {baseline} {ref['time_s']:7.3f} s {_mib(ref['peak_extra_bytes'])}"
                    f" | time ratio {t_ratio:5.2f}  memory ratio {m_ratio:5.3f}"
                )
            print(line, flush=True)
            if loss == "fecl" and args.with_reference:
                ref_variant = _spawn(loss, "reference", size, args)
                row["reference_variant"] = ref_variant
                print(
                    f"{'':4s} {'(FeCLReferenceLoss)':32s} ours {ref_variant['time_s']:7.3f} s "
                    f"{_mib(ref_variant['peak_extra_bytes'])}",
                    flush=True,
                )
            results["rows"].append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
