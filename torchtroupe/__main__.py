"""``python -m torchtroupe demo | info | bench``."""

from __future__ import annotations

import argparse
import runpy
import sys


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m torchtroupe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="spawn ranks, call them, kill one, show latencies")
    demo.add_argument("--world-size", type=int, default=4)
    commands.add_parser("info", help="versions, start method, /dev/shm and fd limits")
    bench = commands.add_parser("bench", help="run a benchmark from bench/ (in a source checkout)")
    bench.add_argument("name", nargs="?", default="actors", help="transport, actors, supervision")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        run_demo(args.world_size)
    elif args.command == "info":
        from ._info import print_info

        print_info()
    else:
        sys.argv = [f"bench.{args.name}", *args.rest]
        try:
            runpy.run_module(f"bench.{args.name}", run_name="__main__")
        except ImportError:
            print("the benchmarks live in bench/ of a source checkout; run this from there")
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
