"""Whole-process comparison: `convlab train` against the plain PyTorch script on the same job.

Runs the two as separate processes, alternating which goes first in each pair, and prints a
markdown table: wall time, peak RSS of the main process (the kernel's maxrss) and peak PSS of
the whole process tree (DataLoader workers included, shared pages counted once), medians and
per-pair ratios (convlab / plain).

    python scripts/compare_plain.py --data ../shared/data/cifar10-subset --epochs 3 --pairs 5
    python scripts/compare_plain.py --data ../shared/data/cifar10-subset --epochs 1 --steps 1 --pairs 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from convlab.app.baseline import FOLDER, cifar_folder, integer
from convlab.run.rundir import hydra_quote


def tree_pss_kb(pid: int) -> int:
    """Summed PSS (kB) of a process and its descendants, read from /proc (0 for processes already gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def measure(name: str, cmd: list[str]) -> dict[str, float]:
    """Wall time (s), main-process peak RSS and process-tree peak PSS (MiB) of one command (the `name` run)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_pss_kb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        last = (proc.stderr.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        sys.exit(f"compare_plain.py: the {name} run failed with exit code {proc.returncode}: {last}")
    return {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024, "pss_mib": peak[0] / 1024}


def main() -> None:
    """Run the pairs and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=cifar_folder, help=f"folder holding {FOLDER}/")
    p.add_argument("--model", choices=("plain_cnn",), default="plain_cnn", help="the plain script's model")
    p.add_argument("--epochs", type=integer(1), default=3)
    p.add_argument("--steps", type=integer(1), help="train only the first N batches of each epoch")
    p.add_argument("--pairs", type=integer(1), default=5)
    args = p.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        limit_c = [f"trainer.limit_train_batches={args.steps}"] if args.steps else []
        limit_p = ["--limit-train-batches", str(args.steps)] if args.steps else []
        runs: dict[str, list[dict[str, float]]] = {"convlab": [], "plain": []}
        for i in range(args.pairs):
            cmds = {
                "convlab": [py, "-m", "convlab", "train", f"model={args.model}", f"data.root={hydra_quote(args.data)}",
                            f"epochs={args.epochs}", *limit_c, f"hydra.run.dir={hydra_quote(f'{tmp}/c{i}')}"],
                "plain": [py, "-m", "convlab.app.baseline", "--data", args.data, "--epochs", str(args.epochs),
                          *limit_p, "--out", f"{tmp}/p{i}.pt"],
            }  # fmt: skip
            for name in ("convlab", "plain") if i % 2 == 0 else ("plain", "convlab"):
                runs[name].append(measure(name, cmds[name]))
                print(
                    f"pair {i + 1} {name:8} " + "  ".join(f"{k} {v:.2f}" for k, v in runs[name][-1].items()),
                    file=sys.stderr,
                )
    job = f"{args.model}, real CIFAR-10 subset, {args.epochs} epoch(s)" + (
        f", {args.steps} step(s) each" if args.steps else ""
    )
    print(f"{job}; {args.pairs} alternating pairs; {os.cpu_count()} CPUs\n")
    print("| measure | convlab (median) | plain script (median) | ratio per pair (median, min–max) |")
    print("|---|---|---|---|")
    for key, label in (
        ("wall_s", "wall time (s)"),
        ("rss_mib", "peak RSS, main process (MiB)"),
        ("pss_mib", "peak PSS, process tree (MiB)"),
    ):
        c, q = [r[key] for r in runs["convlab"]], [r[key] for r in runs["plain"]]
        ratios = [a / b for a, b in zip(c, q, strict=True)]
        print(
            f"| {label} | {statistics.median(c):.2f} | {statistics.median(q):.2f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |"
        )


if __name__ == "__main__":
    main()
