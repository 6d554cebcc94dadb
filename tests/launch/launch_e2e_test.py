#!/usr/bin/env python3
"""End to end: `tessera launch` brings up the demo topology (a coordinator, a prefill replica of
TP 2 and a decode replica of TP 1 on the built-in model) locally — a process per replica — or
through mpirun (one job of 3 ranks, each finding its replica from its world rank).

1. 12 concurrent streaming requests over KServe v2 gRPC equal `tessera generate` (so the TP 2
   prefill replica's two ranks both sent their halves of the KV to the decode replica).
2. Ctrl-C (SIGINT) stops the cluster: `tessera launch` exits 0 and no process of it is left.

Usage: launch_e2e_test.py TESSERA_BINARY local|mpirun [MPIRUN ARGS...]
"""
import concurrent.futures
import os
import re
import sys
import tempfile

import e2e_util as u

TESSERA = os.path.abspath(sys.argv[1])
MODE = sys.argv[2]
MPIRUN_ARGS = sys.argv[3:]
SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    work = tempfile.mkdtemp(prefix=f"tessera-launch-{MODE}-")
    # The shipped demo topology, on free ports.
    text = open(os.path.join(SOURCE, "launch/topologies/demo.yaml")).read()
    text = re.sub(r"(http_port|grpc_port|internal_port): \d+", r"\1: 0", text)
    topology = os.path.join(work, "demo.yaml")
    open(topology, "w").write(text)
    argv = [TESSERA, "launch", topology, "--work-dir", os.path.join(work, "run")]
    if MODE == "mpirun":
        argv += ["--mpirun", "--mpirun-args", " ".join(MPIRUN_ARGS)]
    launch = u.start_launch(argv)
    try:
        u.check(any("[mpirun] $ " in l for l in u.SERVE_LOG) == (MODE == "mpirun"),
                "the workers were not started the way asked")
        ports = u.json.load(open(os.path.join(work, "run", "coordinator-ports.json")))
        grpc_url = f"127.0.0.1:{ports['grpc']}"
        prompts = [[1 + (5 * i + j) % 400 for j in range(6 + 3 * i)] for i in range(12)]
        reference = u.generate_reference(TESSERA, os.path.join(work, "run", "demo-model"),
                                         prompts, 10)
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            outputs = [f.result(timeout=120) for f in
                       [pool.submit(u.grpc_stream, grpc_url, p, 10) for p in prompts]]
        for i, (_, ids) in enumerate(outputs):
            u.check(ids == reference[i], f"prompt {i}: ids {ids} != generate {reference[i]}")
        metrics = u.metrics(ports)
        u.check((u.metric_value(metrics, 'tessera_disaggregated_requests_total{model_name='
                                '"tessera-demo"}') or 0) >= 12, "not disaggregated:\n" + metrics)
        print(f"{MODE}: 12 streams through the launched cluster match tessera generate",
              flush=True)
    finally:
        code = u.interrupt(launch, "tessera launch")
    u.check(code == 0, f"tessera launch exited with {code}")
    u.check_nothing_left(work)
    print("PASS", flush=True)


if __name__ == "__main__":
    u.run(main)
