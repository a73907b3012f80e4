#!/usr/bin/env python3
"""ncu_summary.py - per-kernel totals from an Nsight Compute CSV.

    ncu --metrics gpu__time_duration.sum --csv --print-units base ... > k.csv
    tools/ncu_summary.py k.csv [TOKENS]

Prints each kernel's launches, total and mean duration (kernels run one at a
time under ncu, so the sum is GPU time without launch gaps); with TOKENS, the
total per token as well.
"""
import csv
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    tokens = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    with open(path, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]
    rows = csv.DictReader(lines)
    total = defaultdict(float)
    count = defaultdict(int)
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = r["Kernel Name"].split("(")[0]
        val = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
        total[name] += val * scale
        count[name] += 1
    grand = sum(total.values())
    print(f"{sum(count.values())} kernels, {grand:.1f} us of GPU time")
    for name in sorted(total, key=total.get, reverse=True):
        print(f"  {name[:60]:60s} {count[name]:6d} x {total[name] / count[name]:7.2f} us"
              f" = {total[name]:9.1f} us ({100 * total[name] / grand:4.1f}%)")
    if tokens:
        print(f"per token: {grand / tokens:.1f} us of kernels ({sum(count.values()) / tokens:.0f} launches)")


if __name__ == "__main__":
    main()
