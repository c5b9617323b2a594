"""Peers benchmark: torchtroupe against other ways to run PyTorch workers on one host.

Run with ``python -m bench.peers`` (``make bench-peers``; ``--quick`` for a short run).
Every peer runs the same workloads, each in its own fresh child process of this one
run (so that one peer's background threads and daemons cannot slow the next), and
the results are reported as ratios against torchtroupe measured in the same run.
See ``bench/peers/__main__.py`` for the report and ``bench/peers/peers.py`` for how
each peer is driven.
"""
