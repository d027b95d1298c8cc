"""Benchmark: the CPU a page-content callback costs the server, this tree against a baseline.

In-process (Flask's test client, no network), in one worker process per tree, the
trees taking turns (`--rounds`): the runs page at 1,005 runs and seed-CNN and LeNet-5
iteration views of bench_dashboard.py's store. CPU time of the worker
(`time.process_time`), so other work on the machine changes it little. For each page:

- `first`: its first call in the process (the iteration's steps are read; on this tree
  nothing of the view is kept yet);
- `rebuilt`: later calls with the kept views dropped first (this tree: what a page
  not asked for before costs once the iteration's steps are read; the baseline keeps
  no views, so it is its cost every time);
- `again`: the same page asked again (this tree: the view kept).

    .venv/bin/python bench/bench_page_cpu.py [--baseline 8a39736] [--rounds 2]

Needs bench_dashboard.py's store (bench/results/dashboard-1000.db; that bench builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

PAGES = {
    "runs (1,005 runs)": ("/", ""),
    "seed input view": ("/iteration", "?run=1&it=2"),
    "seed forward phase": ("/iteration", "?run=1&it=1&phase=forward"),
    "LeNet-5 input view": ("/iteration", "?run=1001&it=50"),
    "LeNet-5 forward conv1": ("/iteration", "?run=1001&it=50&phase=forward&layer=conv1"),
    "LeNet-5 backward phase": ("/iteration", "?run=1001&it=50&phase=backward"),
}


def worker(db: str) -> None:
    sys.path.insert(0, os.getcwd())
    from dashapp.app import create_app

    app = create_app(db)
    client = app.server.test_client()
    client.get("/")
    deps = json.loads(client.get("/_dash-dependencies").data)
    dep = next(d for d in deps if "_pages_content.children" in d["output"])
    outputs = [
        {"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]}
        for o in dep["output"].strip(".").split("...")
    ]
    kept = getattr(sys.modules.get("dashapp.pages.iteration"), "_kept_views", None)
    out = {}
    for label, (path, search) in PAGES.items():
        values = {"pathname": path, "search": search, "hash": "", "href": f"http://x{path}{search}"}
        body = json.dumps(
            dict(
                output=dep["output"],
                outputs=outputs,
                inputs=[dict(i, value=values.get(i["property"])) for i in dep["inputs"]],
                changedPropIds=[f"{dep['inputs'][0]['id']}.{dep['inputs'][0]['property']}"],
                state=[dict(s, value=None) for s in dep.get("state", [])],
            )
        )

        def call(body: str = body) -> float:
            start = time.process_time()
            response = client.post(
                "/_dash-update-component", data=body, content_type="application/json"
            )
            spent = time.process_time() - start
            assert response.status_code == 200 and b"Something went wrong" not in response.data
            return spent

        first = call()
        rebuilt = []
        for _ in range(5):
            if kept is not None:
                kept.clear()
            rebuilt.append(call())
        again = [call() for _ in range(10)]
        out[label] = {"first": [first], "rebuilt": rebuilt, "again": again}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="8a39736")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--db", default=str(RESULTS / "dashboard-1000.db"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.db)
        return
    sys.path.insert(0, str(REPO / "bench"))
    from bench_dashboard import baseline_tree

    trees = {"baseline": baseline_tree(args.baseline), "this": REPO}
    samples: dict = {name: {} for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--db", args.db]
            env = dict(os.environ, PYTHONPATH=str(tree))
            done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"worker failed ({tree}):\n{done.stderr[-3000:]}")
            for label, kinds in json.loads(done.stdout.strip().splitlines()[-1]).items():
                for kind, times in kinds.items():
                    samples[name].setdefault(label, {}).setdefault(kind, []).extend(times)
    print(f"CPU ms per page-content callback, median (min) of {args.rounds} worker(s) per tree")
    print(f"  {'page':24s} {'':8s} {'baseline':>16s} {'this':>16s}  ratio (median, min)")
    for label in PAGES:
        for kind in ("first", "rebuilt", "again"):
            b, t = samples["baseline"][label][kind], samples["this"][label][kind]
            mb, mt = statistics.median(b), statistics.median(t)
            print(
                f"  {label:24s} {kind:8s} {1000 * mb:8.1f} ({1000 * min(b):5.1f})"
                f" {1000 * mt:8.1f} ({1000 * min(t):5.1f})  x{mt / mb:.2f} x{min(t) / min(b):.2f}"
            )


if __name__ == "__main__":
    main()
