"""sslbench: the classic self-supervised pretext tasks, their transfer protocols, and the papers' tables."""

import os

# Transparent huge pages for torch's large CPU buffers (torch reads this once, at its first allocation, so only when
# sslbench is imported before torch). make_batch writes a fresh float batch of 100-500 MB every step at the paper
# geometry; with 4 KB pages a third of its time is page faults (Jigsaw: 101 -> 72 ms per batch, RotNet 400 -> 259 ms;
# benchmarks/bench_make_batch.py). An explicit THP_MEM_ALLOC_ENABLE=0 keeps torch's default.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
