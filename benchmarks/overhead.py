#!/usr/bin/env python
"""The samplers' overhead over the bare network, measured: writes
benchmarks/overhead.md.

A sampler's cost is its network calls plus everything around them (time grid,
coefficient lookups, conversions between parameterisations, the update). This script
times 50 steps of each sampler on ``MLP(2, hidden=128, depth=3)`` with a batch of 512
(one CPU thread) and divides by the time of the same number of bare network calls. When
``diffusers`` is importable (not a dependency of the book; e.g. ``pip install --target
/tmp/dfs diffusers`` and ``PYTHONPATH=/tmp/dfs``), its Euler, DDIM and DPM-Solver++
schedulers run on the same network for comparison, against the same baseline.

    python benchmarks/overhead.py [--repeats 30]

Target (issue 5): at most 1.15x for Euler.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from dlib import nets, param, sampling, schedules  # noqa: E402
from run_chapters import machine  # noqa: E402 (benchmarks/ is on sys.path)

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, BATCH = 50, 512


def timeit(cases: dict, repeats: int) -> dict:
    """The fastest of ``repeats`` wall times (ms) of each ``cases[name]()``, the cases
    interleaved (one run of each per round, after 3 warm-up rounds), so that a slow
    moment of the machine does not fall on one case only. The minimum, as in Python's
    ``timeit``, is the run least disturbed by the rest of the machine."""
    best = {name: float("inf") for name in cases}
    for r in range(3 + repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            if r >= 3:
                best[name] = min(best[name], 1e3 * (time.perf_counter() - start))
    return best


class Recorder(torch.nn.Module):
    """The network, recording its inputs: the bare baseline of a sampler is the same
    network called on exactly the inputs the sampler gave it (the inputs matter on a
    CPU: an untrained network's activations can reach subnormal floats, which are slow,
    so calls on one fixed input would not be the same work)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, None

    def forward(self, x, t):
        if self.calls is not None:
            self.calls.append((x.clone(), t.clone()))
        return self.net(x, t)


def dlib_cases(net, x):
    sch = schedules.VPLinear()
    den = param.Denoiser(net, sch, "eps")
    grid = sampling.time_grid(STEPS)
    return {
        "dlib sample_euler": lambda: sampling.sample_euler(den, x, grid),
        "dlib sample_ancestral, eta=0 (DDIM)": lambda: sampling.sample_ancestral(
            den, x, grid, eta=0.0
        ),
        "dlib sample_ancestral, eta=1 (DDPM)": lambda: sampling.sample_ancestral(
            den, x, grid, eta=1.0, generator=torch.Generator().manual_seed(0)
        ),
        "dlib sample_euler_maruyama": lambda: sampling.sample_euler_maruyama(
            den, x, grid, generator=torch.Generator().manual_seed(0)
        ),
        "dlib sample_heun (2 calls per step)": lambda: sampling.sample_heun(
            den, x, grid
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

        out[f"diffusers {name}"] = run
    return out, diffusers.__version__


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = Recorder(nets.MLP(2, hidden=128, depth=3).eval())
    x = torch.randn(BATCH, 2)
    rows = []
    with torch.no_grad():
        cases = dlib_cases(net, x)
        extra, dver = diffusers_cases(net, x)
        cases.update(extra)
        fns, calls = {}, {}
        for name, fn in cases.items():
            net.calls = []
            fn()  # record the inputs this sampler gives the network
            calls[name], net.calls = net.calls, None

            def bare(rec=calls[name]):
                for xi, ti in rec:
                    net(xi, ti)

            fns[name], fns["bare: " + name] = fn, bare
        ms = timeit(fns, args.repeats)
        for name in cases:
            base = ms["bare: " + name]
            n = len(calls[name])
            rows.append((name, n, ms[name], base, ms[name] / base))
            print(
                f"{name:40s} {ms[name]:8.2f} ms  bare {base:7.2f} ms  "
                f"x{ms[name] / base:.2f}"
            )
    lines = [
        "# Sampler overhead over the bare network",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/overhead.py` "
        f"on {machine()}"
        + (f", diffusers {dver}" if dver else " (diffusers not installed)")
        + ".",
        f"{STEPS} steps, `MLP(2, hidden=128, depth=3)`, batch {BATCH}; fastest of "
        f"{args.repeats} interleaved runs. Ratio = sampler time / time of the same "
        "network calls on the same inputs, bare. Target: at most 1.15x for Euler.",
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
