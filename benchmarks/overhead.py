#!/usr/bin/env python
"""The samplers' overhead over the bare network, measured: writes
benchmarks/overhead.md.

A sampler's cost is its network calls plus everything around them (time grid,
coefficient lookups, conversions between parameterisations, the update). This script
times 50 steps of each sampler on ``MLP(2, hidden=128, depth=3)`` with a batch of 512
(one CPU thread) and divides by the time of the same number of bare network calls. When
``diffusers`` is installed (``pip install diffusers``; not a dependency of the book),
its Euler, DDIM and DPM-Solver++ schedulers run on the same network for comparison.

    python benchmarks/overhead.py [--repeats 30]

Target (issue 5): at most 1.15x for Euler.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from dlib import nets, param, sampling, schedules  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, BATCH = 50, 512


def timeit(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs (after 3 warm-ups)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def dlib_cases(net, x):
    sch = schedules.VPLinear()
    den = param.Denoiser(net, sch, "eps")
    grid = sampling.time_grid(STEPS)
    return {
        "dlib sample_euler": (STEPS, lambda: sampling.sample_euler(den, x, grid)),
        "dlib sample_ancestral, eta=0 (DDIM)": (
            STEPS,
            lambda: sampling.sample_ancestral(den, x, grid, eta=0.0),
        ),
        "dlib sample_ancestral, eta=1 (DDPM)": (
            STEPS,
            lambda: sampling.sample_ancestral(den, x, grid, eta=1.0),
        ),
        "dlib sample_euler_maruyama": (
            STEPS,
            lambda: sampling.sample_euler_maruyama(den, x, grid),
        ),
        "dlib sample_heun (2 calls per step)": (
            2 * STEPS,
            lambda: sampling.sample_heun(den, x, grid),
        ),
    }


def diffusers_cases(net, x):
    try:
        import diffusers
    except ImportError:
        return {}, None
    out = {}
    kinds = {
        "Euler": diffusers.EulerDiscreteScheduler,
        "DDIM": diffusers.DDIMScheduler,
        "DPM-Solver++(2M)": diffusers.DPMSolverMultistepScheduler,
    }
    for name, cls in kinds.items():
        sched = cls(num_train_timesteps=1000)

        def run(sched=sched):
            sched.set_timesteps(STEPS)
            y = x * sched.init_noise_sigma
            for k in sched.timesteps:
                inp = sched.scale_model_input(y, k)
                t = torch.full((BATCH,), (float(k) + 1) / 1000)
                y = sched.step(net(inp, t), k, y).prev_sample
            return y

        out[f"diffusers {name}"] = (STEPS, run)
    return out, diffusers.__version__


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nets.MLP(2, hidden=128, depth=3).eval()
    x = torch.randn(BATCH, 2)
    tb = torch.full((BATCH,), 0.5)

    def bare(n):
        def run():
            for _ in range(n):
                net(x, tb)

        return run

    rows = []
    with torch.no_grad():
        base = {n: timeit(bare(n), args.repeats) for n in (STEPS, 2 * STEPS)}
        cases = dlib_cases(net, x)
        extra, dver = diffusers_cases(net, x)
        cases.update(extra)
        for name, (calls, fn) in cases.items():
            ms = timeit(fn, args.repeats)
            rows.append((name, calls, ms, base[calls], ms / base[calls]))
            print(
                f"{name:40s} {ms:8.2f} ms  bare {base[calls]:7.2f} ms  "
                f"x{ms / base[calls]:.2f}"
            )
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# Sampler overhead over the bare network",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/overhead.py` "
        f"on {cpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, one thread"
        + (f", diffusers {dver}" if dver else " (diffusers not installed)")
        + ".",
        f"{STEPS} steps, `MLP(2, hidden=128, depth=3)`, batch {BATCH}; median of "
        f"{args.repeats} runs. Ratio = sampler time / time of the same number of bare "
        "network calls. Target: at most 1.15x for Euler.",
        "",
        "| sampler | network calls | time (ms) | bare calls (ms) | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {c} | {ms:.2f} | {b:.2f} | {r:.2f}x |" for n, c, ms, b, r in rows
    ]
    (ROOT / "benchmarks" / "overhead.md").write_text("\n".join(lines) + "\n")
    print("-> benchmarks/overhead.md")


if __name__ == "__main__":
    main()
