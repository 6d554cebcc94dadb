#!/usr/bin/env python3
"""End to end: one TP 2 replica as two `tessera worker` processes started WITHOUT mpirun, each
told its rank the way a LeaderWorkerSet tells its pods (LWS_WORKER_INDEX, LWS_GROUP_SIZE,
LWS_LEADER_ADDRESS), plus a `tessera coordinator`. Rank 0 hosts the rendezvous store on
--rendezvous-port; the ranks meet through it and run over Gloo.

1. Streaming requests over KServe v2 gRPC give the greedy tokens of `tessera generate` (one
   process, one rank).
2. Only rank 0 of the two, with --comm-timeout-s 3: it exits non-zero within the bound, saying the
   replica's ranks did not all arrive. Only rank 1: it exits non-zero, saying rank 0's store did
   not answer.

Usage: gloo_replica_e2e_test.py TESSERA_BINARY
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import e2e_util as u

TESSERA = os.path.abspath(sys.argv[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, env_extra, tag):
    env = dict(os.environ)
    for k in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
              "RANK", "WORLD_SIZE"):
        env.pop(k, None)  # only the LWS variables say who is who
    env.update(env_extra)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    threading.Thread(target=lambda: [u.SERVE_LOG.append(f"[{tag}] {l}") for l in proc.stdout],
                     daemon=True).start()
    return proc


def lws(rank, size=2):
    return {"LWS_WORKER_INDEX": str(rank), "LWS_GROUP_SIZE": str(size),
            "LWS_LEADER_ADDRESS": "127.0.0.1"}


def worker_argv(model, coordinator, rendezvous_port, timeout_s):
    return [TESSERA, "worker", "--model", model, "--served-model-name", u.MODEL,
            "--coordinator", coordinator, "--listen", "127.0.0.1:0", "--tp", "2",
            "--threads", "1", "--kv-cache-gib", "0.0625", "--rendezvous-port",
            str(rendezvous_port), "--comm-timeout-s", str(timeout_s), "--register-timeout", "60"]


def wait_exit(proc, limit_s, what):
    try:
        return proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        u.fail(f"{what} still running after {limit_s} s: a missing rank must not hang it")


def serve_across_processes(work, model):
    ports_file = os.path.join(work, "ports.json")
    procs = [start([TESSERA, "coordinator", "--model", model, "--served-model-name", u.MODEL,
                    "--port", "0", "--grpc-port", "0", "--internal-address", "127.0.0.1:0",
                    "--port-file", ports_file], {}, "coordinator")]
    try:
        deadline = time.time() + 60
        while not os.path.exists(ports_file):
            u.check(procs[0].poll() is None, "coordinator exited early")
            u.check(time.time() < deadline, "coordinator not up in 60 s")
            time.sleep(0.1)
        ports = json.load(open(ports_file))
        rendezvous = free_port()
        for rank in (1, 0):  # the follower first: it waits for rank 0's store to come up
            procs.append(start(worker_argv(model, f"127.0.0.1:{ports['internal']}", rendezvous, 60),
                               lws(rank), f"rank{rank}"))
        deadline = time.time() + 120
        while not any("serving on" in l for l in u.SERVE_LOG):
            u.check(all(p.poll() is None for p in procs), "a process exited early")
            u.check(time.time() < deadline, "the TP 2 replica did not register in 120 s")
            time.sleep(0.1)
        u.check(sum("serving on" in l for l in u.SERVE_LOG) == 1, "more than one rank leads")
        prompts = [[1 + (5 * i + j) % 400 for j in range(5 + 4 * i)] for i in range(4)]
        reference = u.generate_reference(TESSERA, model, prompts, 12)
        url = f"127.0.0.1:{ports['grpc']}"
        deadline = time.time() + 60
        for i, prompt in enumerate(prompts):
            while True:  # the coordinator may not route to the replica until its first heartbeat
                try:
                    _, ids = u.grpc_stream(url, prompt, 12)
                    break
                except RuntimeError as e:
                    u.check(time.time() < deadline, f"no replica took the request: {e}")
                    time.sleep(0.5)
            u.check(ids == reference[i], f"prompt {i}: ids {ids} != generate {reference[i]}")
        print("2 worker processes (LWS env, Gloo) give the tokens of tessera generate", flush=True)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                u.fail("a process did not stop within 60 s of SIGINT")


def missing_rank(model, present, expected_text):
    """Starts only rank `present` of 2 with a 3 s timeout: a clear error, well within bounds."""
    del u.SERVE_LOG[:]
    timeout_s = 3
    start_time = time.time()
    proc = start(worker_argv(model, "127.0.0.1:1", free_port(), timeout_s), lws(present),
                 f"rank{present}-alone")
    # Rendezvous (at most twice the timeout) + model setup; far below "a hang".
    code = wait_exit(proc, 40, f"rank {present} alone")
    took = time.time() - start_time
    output = "".join(u.SERVE_LOG)
    u.check(code != 0, f"rank {present} alone exited 0:\n{output}")
    u.check(expected_text in output, f"rank {present} alone: no '{expected_text}' in:\n{output}")
    u.check("DEADLINE_EXCEEDED" in output or "DeadlineExceeded" in output or
            "deadline" in output.lower(), f"rank {present} alone: not a deadline error:\n{output}")
    print(f"rank {present} alone: exit {code} after {took:.1f} s: "
          f"{[l for l in output.splitlines() if expected_text in l][0].strip()}", flush=True)


def main():
    work = tempfile.mkdtemp(prefix="tessera-gloo-replica-")
    model = os.path.join(work, "model")
    subprocess.run([TESSERA, "make-model", "--out", model, "--preset", "tiny", "--seed", "7",
                    "--init-std", "0.5"], check=True, capture_output=True)
    serve_across_processes(work, model)
    missing_rank(model, 0, "did not all arrive")
    missing_rank(model, 1, "did not answer")
    print("PASS", flush=True)


if __name__ == "__main__":
    u.run(main)
