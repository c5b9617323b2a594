# ruff: noqa: E501  (the report's prose lines)
"""Runs every peer in its own child process, then writes the "peers" report.

``python -m bench.peers [--quick] [--no-doc] [--only torchtroupe,pipe,...]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    REPO_ROOT,
    machine_markdown,
    markdown_table,
    median,
    percentile,
    replace_section,
    say,
    shm_entries,
)
from bench.peers._one import IDLE_S, MIB, READY_WORKERS, TENSOR_MIB, WIDTHS, counts

ORDER = ["torchtroupe", "pipe", "queue", "executor", "ray", "monarch"]
SHORT = {
    "torchtroupe": "torchtroupe",
    "pipe": "Pipe",
    "queue": "mp.Queue",
    "executor": "collective_rpc",
    "ray": "Ray",
    "monarch": "Monarch",
}
IMG_DIR = REPO_ROOT / "docs" / "img"
FRAMEWORK_PROCESSES = ("raylet", "gcs_server", "ray::", "monarch", "hyperactor")


def run_peer(key: str, quick: bool, limit_s: float) -> dict[str, Any]:
    """Runs ``bench.peers._one`` for one peer; its JSON, plus how the child ended."""
    with tempfile.TemporaryDirectory(prefix="tt-peers-") as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        command = [sys.executable, "-m", "bench.peers._one", key, "--out", str(out)]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        begin = time.perf_counter()
        with open(log, "w", encoding="utf-8") as stderr:
            child = subprocess.Popen(
                command + (["--quick"] if quick else []),
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                returncode: int | str = child.wait(limit_s)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                returncode = f"killed after {limit_s:.0f} s"
        result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"key": key}
        text = log.read_text(encoding="utf-8", errors="replace")
        result["returncode"] = returncode
        result["wall_s"] = time.perf_counter() - begin
        result["stderr_tail"] = [line for line in text.splitlines() if line.strip()][-6:]
        for line in text.splitlines():
            if line.startswith(f"  {key}:"):
                say(line)
        if returncode != 0:
            say(
                f"  {key}: exit {returncode}; stderr ends:\n    "
                + "\n    ".join(result["stderr_tail"])
            )
        return result


def leftovers(before: set[int]) -> list[str]:
    """Processes of this benchmark or of Ray/Monarch that outlived their peer."""
    me = psutil.Process()
    found = [f"{p.pid} {p.name()}" for p in me.children(recursive=True)]
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        if process.info["pid"] in before:
            continue
        text = " ".join([process.info["name"] or "", *(process.info["cmdline"] or [])])
        if any(word in text for word in FRAMEWORK_PROCESSES):
            found.append(f"{process.info['pid']} {process.info['name']}")
    return found


def ratio(value: float, reference: float) -> float:
    return value / reference if reference and reference == reference else float("nan")


def plot(
    path: Path,
    title: str,
    ylabel: str,
    series: dict[str, list[float]],
    groups: list[str],
    log: bool,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        positions = [g + index * width for g in range(len(groups))]
        axes.bar(positions, values, width, label=name)
    axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if log:
        axes.set_yscale("log")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under 3 minutes)")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--only", help="comma-separated peers, e.g. torchtroupe,pipe")
    args = parser.parse_args()
    keys = [key for key in ORDER if not args.only or key in args.only.split(",")]
    n = counts(args.quick)
    limit_s = 150.0 if args.quick else 240.0

    shm_before = shm_entries()
    pids_before = {p.pid for p in psutil.process_iter()}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for key in keys:
        say(f"== {key}")
        results[key] = run_peer(key, args.quick, limit_s)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    time.sleep(1.0)  # let the last processes of the last peer exit
    stray = leftovers(pids_before)
    leaked = sorted(shm_entries() - shm_before)

    ran = {k: r for k, r in results.items() if "name" in r}
    names = {k: SHORT[k] for k in ran}
    ref = ran.get("torchtroupe", {})

    def med(result: dict[str, Any], *path: str) -> float:
        value: Any = result
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return float("nan")
            value = value[part]
        return median(value) if value else float("nan")

    # no-op call
    rows = []
    for r in ran.values():
        m = med(r, "call_us")
        rows.append(
            [r["name"], m, percentile(r.get("call_us", []), 99), ratio(m, med(ref, "call_us"))]
        )
    call_table = markdown_table(["peer", "median µs", "p99 µs", "median / torchtroupe"], rows)

    # broadcast
    header = (
        ["peer"]
        + [f"{w} workers µs" for w in WIDTHS]
        + [f"{w} workers / torchtroupe" for w in (1, 8)]
    )
    rows = []
    for r in ran.values():
        values = [med(r, "broadcast_us", str(w)) for w in WIDTHS]
        rows.append(
            [r["name"], *values]
            + [
                ratio(med(r, "broadcast_us", str(w)), med(ref, "broadcast_us", str(w)))
                for w in (1, 8)
            ]
        )
    bcast_table = markdown_table(header, rows)

    # tensors: MB/s = MiB * 2^20 / 1e6 / median seconds
    def mbps(r: dict[str, Any], mib: int) -> float:
        seconds = med(r, "tensor_s", str(mib))
        return mib * MIB / 1e6 / seconds if seconds == seconds else float("nan")

    header = (
        ["peer"]
        + [f"{m} MiB MB/s" for m in TENSOR_MIB]
        + [f"{m} MiB / torchtroupe" for m in TENSOR_MIB]
    )
    rows = [
        [
            r["name"],
            *[mbps(r, m) for m in TENSOR_MIB],
            *[ratio(mbps(r, m), mbps(ref, m)) for m in TENSOR_MIB],
        ]
        for r in ran.values()
    ]
    tensor_table = markdown_table(header, rows)

    # ready
    rows = []
    for r in ran.values():
        times = r.get("ready_s", [])
        rows.append(
            [
                r["name"],
                len(times),
                med(r, "ready_s"),
                min(times) if times else float("nan"),
                max(times) if times else float("nan"),
                ratio(med(r, "ready_s"), med(ref, "ready_s")),
            ]
        )
    ready_table = markdown_table(
        ["peer", "runs", "median s", "min s", "max s", "median / torchtroupe"], rows
    )

    # kill and restart
    rows = []
    for r in ran.values():
        errors = r.get("kill_error_s", [])
        serving = r.get("kill_serving_s", [])
        seen = sorted(set(e for e in r.get("kill_errors", []) if not e.startswith("no error")))
        err_ms = med(r, "kill_error_s") * 1e3
        serve_ms = med(r, "kill_serving_s") * 1e3
        if "kill_error_s" not in r:
            what = "the caller's process died (see notes)" if r["key"] == "monarch" else "not run"
        else:
            what = ", ".join(f"`{e}`" for e in seen) or "none"
        rows.append(
            [
                r["name"],
                f"{len(errors)}/{n['kills']}",
                what,
                err_ms,
                ratio(err_ms, med(ref, "kill_error_s") * 1e3),
                r.get("restart") or "none",
                serve_ms if serving else float("nan"),
                ratio(serve_ms, med(ref, "kill_serving_s") * 1e3) if serving else float("nan"),
            ]
        )
    kill_table = markdown_table(
        [
            "peer",
            "kills seen",
            "error at the caller",
            "SIGKILL → error median ms",
            "/ torchtroupe",
            "restart",
            "SIGKILL → serving median ms",
            "/ torchtroupe",
        ],
        rows,
    )

    # idle CPU
    rows = []
    for r in ran.values():
        idle = r.get("idle_cpu", {})
        rows.append(
            [
                r["name"],
                idle.get("workers", float("nan")),
                idle.get("caller", float("nan")),
                idle.get("helpers", float("nan")),
                int(idle.get("helper_processes", 0)) if idle else "—",
            ]
        )
    idle_table = markdown_table(
        [
            "peer",
            f"{READY_WORKERS} workers, % of a core",
            "caller process %",
            "other helper processes %",
            "helper processes",
        ],
        rows,
    )

    # plots
    if ran:
        plot(
            IMG_DIR / "peers-call.png",
            "No-op call to one worker, median (lower is better)",
            "µs (log scale)",
            {names[k]: [med(r, "call_us")] for k, r in ran.items()},
            ["no-op call"],
            True,
        )
        plot(
            IMG_DIR / "peers-broadcast.png",
            "No-op broadcast + gather, median (lower is better)",
            "µs (log scale)",
            {names[k]: [med(r, "broadcast_us", str(w)) for w in WIDTHS] for k, r in ran.items()},
            [f"{w} workers" for w in WIDTHS],
            True,
        )
        plot(
            IMG_DIR / "peers-tensor.png",
            "float32 tensor to one worker (higher is better)",
            "MB/s (log scale)",
            {names[k]: [mbps(r, m) for m in TENSOR_MIB] for k, r in ran.items()},
            [f"{m} MiB" for m in TENSOR_MIB],
            True,
        )
        plot(
            IMG_DIR / "peers-lifecycle.png",
            "Start, death and restart, medians (lower is better)",
            "ms (log scale)",
            {
                names[k]: [
                    med(r, "ready_s") * 1e3,
                    med(r, "kill_error_s") * 1e3,
                    med(r, "kill_serving_s") * 1e3,
                ]
                for k, r in ran.items()
            },
            [f"{READY_WORKERS} workers ready", "SIGKILL → caller error", "SIGKILL → serving"],
            True,
        )

    # notes
    notes = []
    for key in keys:
        r = results[key]
        label = r.get("name", SHORT[key])
        if "unavailable" in r:
            notes.append(f"- **{label}** could not run here: {r['unavailable']}.")
        for error in r.get("errors", []):
            notes.append(f"- **{label}**, error in workload {error}")
        if r.get("returncode") not in (0, None):
            tail = " / ".join(line.strip() for line in r.get("stderr_tail", [])[-3:])
            notes.append(
                f"- **{label}**: its child process ended with `{r['returncode']}`; stderr ended with: `{tail[:300]}`"
            )
        if "wall_s" in r:
            notes.append(f"- **{label}**: {r['wall_s']:.0f} s for all its workloads.")
        if "init_s" in r:
            notes.append(
                f"- **{label}**: `ray.init` took {r['init_s']:.1f} s, not counted in the start-up row."
            )
    body = "\n\n".join(
        [
            "## Peers",
            f"`python -m bench.peers{' --quick' if args.quick else ''}` "
            f"({'quick' if args.quick else 'full'} run, {elapsed:.0f} s). Machine: {machine_markdown()}.",
            "**This is a noisy shared 2-core VM**: other jobs (including other test runs) "
            f"share it; one-minute load average {load_before:.1f} at the start of this run and "
            f"{load_after:.1f} at its end. Medians move by up to about 2x between runs, p99s "
            "more, and with 2 cores every run with more than one worker measures the scheduler "
            "as much as the framework. Compare the ratios of one run, and rerun before reading "
            "much into one number.",
            "Every peer runs the same workloads in its own fresh child process of this run, one "
            "peer after the other, so no peer's threads or daemons slow another. The workers "
            "have no-op, `pid`, `consume(tensor)` (returns the tensor's last element as a float) "
            "and `block` (waits forever) methods. Peers:\n\n"
            "- **torchtroupe**: `tt.spawn` of an actor with those endpoints; `group[0].call`, "
            "`group.broadcast`.\n"
            "- **Pipe**: one `multiprocessing.Pipe` per worker, messages pickled with the "
            "standard `pickle` (protocol 5) and sent as bytes: a tensor is copied through the pipe.\n"
            "- **mp.Queue**: a `torch.multiprocessing.Queue` pair per worker; tensors go by "
            "torch's shared-memory reduction (the storage is moved to shared memory and a file "
            "descriptor is sent).\n"
            "- **collective_rpc**: `bench/peers/executor.py`, a vLLM-style executor, one Pipe "
            "per worker, `Connection.send` (so torch's shared-memory reduction too).\n"
            "- **Ray**: `ray.init(include_dashboard=False, num_cpus=<cores>, log_to_driver=False)` "
            "in the child, actors with `num_cpus=0` (so 8 fit), `ray.get`; `ray.shutdown()` at the end.\n"
            '- **Monarch** (`torchmonarch`): `this_host().spawn_procs(per_host={"procs": n})`, '
            "`procs.spawn(...)`, `call_one().get()` / `call().get()`.\n\n"
            "The `multiprocessing` peers start their workers from a forkserver with torch "
            "preloaded, as torchtroupe does. Nothing is pinned; timings use "
            "`time.perf_counter`, one operation at a time.",
            f"### No-op call to one worker\n\n{n['calls']} timed calls after {n['calls'] // 10} "
            f"warm-up ones.\n\n{call_table}\n\n![no-op call](img/peers-call.png)",
            f"### No-op broadcast and gather\n\nA fresh set of workers per width; "
            f"{n['broadcasts']} timed broadcasts each (Ray: a list of `.remote()` and one "
            f"`ray.get`; the Pipe and Queue peers: send to all, then receive from each in order)."
            f"\n\n{bcast_table}\n\n![broadcast](img/peers-broadcast.png)",
            "### Tensor to one worker\n\nA fresh, unshared float32 tensor each time (a `clone()` "
            "made before the clock starts), sent as the argument of `consume`, which returns a "
            "scalar; the time is the whole call; MB/s is 10^6 bytes per second of the median. "
            f"Runs after one warm-up: {', '.join(f'{m} MiB: {c}' for m, c in n['tensor'].items())}."
            f"\n\n{tensor_table}\n\n![tensor](img/peers-tensor.png)",
            f"### {READY_WORKERS} workers ready\n\nFrom the start call until every worker "
            "answered one call; one untimed start and stop first warms up (the forkserver, "
            f"Ray's worker pool).\n\n{ready_table}",
            f"### SIGKILL and restart\n\nOne worker, busy in `block` (50 ms after the call was "
            "sent), gets SIGKILL; the time is from the kill until the caller's pending call raises. "
            "Then, where the peer has a restart, until the worker answers a call again. The Pipe "
            "worker is respawned by hand from the same forkserver. A `torch.multiprocessing.Queue` "
            "never reports a dead writer: its caller polls `get(timeout=0.01)` and "
            "`process.is_alive()`, without which it would hang. Ray's restart is a "
            "`max_restarts=-1` actor, polled with calls until one answers.\n\n"
            f"{kill_table}\n\n![lifecycle](img/peers-lifecycle.png)",
            f"### Idle CPU\n\n{READY_WORKERS} workers started and called once, then no calls for "
            f"{IDLE_S:.0f} s (`threading.Event().wait`); CPU time (user + system, `psutil`) "
            "used in that window as % of one core: by the workers, by the caller's process (its "
            "framework threads: the benchmark itself only waits), and by every other process the "
            "caller started (forkserver, resource tracker; Ray's GCS, raylet and idle workers)."
            f"\n\n{idle_table}",
            "### Notes\n\n"
            + ("\n".join(notes) or "- Every peer ran every workload.")
            + f"\n- Clean-up check after the run: stray processes: {', '.join(stray) or 'none'}; "
            f"new `/dev/shm` entries: {', '.join(leaked) or 'none'}.",
        ]
    )
    print(body)
    if not args.no_doc:
        replace_section("peers", body)
    if stray or leaked:
        say(f"LEFTOVERS: processes {stray}, /dev/shm {leaked}")


if __name__ == "__main__":
    main()
