#!/usr/bin/env python
"""Execute every chapter (on copies, the committed notebooks are not touched) the way
the project executes them (fresh kernel, top to bottom, one torch thread) and write
benchmarks/results.md: wall time per chapter and in total, with the machine it ran on.

    python benchmarks/run_chapters.py [NOTEBOOK ...]
"""

from __future__ import annotations

import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGET_S = 90.0


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, one torch thread (OMP_NUM_THREADS=1)"
    )


def main(argv):
    sys.path.insert(0, str(ROOT / "scripts"))
    import notebooks

    paths = notebooks.chapters(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in paths:
            copy = pathlib.Path(tmp) / p.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, copy)
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "notebooks.py"),
                    "execute",
                    str(copy),
                ],
                check=True,
                cwd=tmp,
                stdout=subprocess.DEVNULL,
            )
            sec = time.perf_counter() - start
            rows.append((str(p.relative_to(ROOT)), sec))
            print(f"{rows[-1][0]}: {sec:.1f} s")
    total = sum(s for _, s in rows)
    lines = [
        "# Chapter execution times",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python benchmarks/run_chapters.py` "
        f"on: {machine()}.",
        "Each time includes kernel start-up; the budget is 90 s per chapter on 2 CPU "
        "cores.",
        "",
        "| chapter | wall time (s) | within budget |",
        "|---|---:|:---:|",
    ]
    lines += [
        f"| `{name}` | {sec:.1f} | {'yes' if sec <= BUDGET_S else 'NO'} |"
        for name, sec in rows
    ]
    lines += [f"| **total** | **{total:.1f}** | |", ""]
    (ROOT / "benchmarks" / "results.md").write_text("\n".join(lines))
    print(f"total: {total:.1f} s -> benchmarks/results.md")
    return 0 if all(sec <= BUDGET_S for _, sec in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
