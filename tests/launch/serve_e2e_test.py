#!/usr/bin/env python3
"""End to end: `tessera serve` (a coordinator and two replica workers as processes on loopback)
driven by the real clients, `openai` (HTTP) and `tritonclient` (KServe v2 gRPC).

1. 64 concurrent streaming requests, half over HTTP and half over gRPC, all greedy: every
   output equals what `tessera generate` gives for the same prompt ids.
2. A replica is frozen (SIGSTOP, as a hung or partitioned host) while 8 long requests stream:
   exactly those routed to it end with a retryable error, the others finish, the coordinator
   takes it out of rotation within its lease, and new requests succeed on the other.
3. SIGINT stops the whole cluster cleanly (exit 0, no process left behind).

Usage: serve_e2e_test.py TESSERA_BINARY
"""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import e2e_util as u
import openai

TESSERA = os.path.abspath(sys.argv[1])
MODEL = u.MODEL
MAX_TOKENS = 12
# The long requests of step 2 must still be generating when the replica is frozen, on any machine:
# the model is sized so that LONG_TOKENS take seconds (the demo model makes 1000 in under one).
LONG_TOKENS = 600
MODEL_SHAPE = ["--hidden-size", "384", "--intermediate-size", "1536", "--num-layers", "4",
               "--num-heads", "6", "--num-kv-heads", "2", "--seed", "7", "--init-std", "0.5"]
LEASE_S = 3.0  # the coordinator's default --lease-timeout


SERVE_LOG = u.SERVE_LOG  # serve's output, printed when the test fails
fail, check = u.fail, u.check


def generate_reference(model_dir, prompts):
    return u.generate_reference(TESSERA, model_dir, prompts, MAX_TOKENS)


def http_stream(client, prompt_ids):
    text, ids = "", None
    stream = client.completions.create(model=MODEL, prompt=prompt_ids, max_tokens=MAX_TOKENS,
                                       temperature=0, stream=True, extra_body={"ignore_eos": True},
                                       stream_options={"include_usage": True})
    usage, finish = None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
    check(usage is not None and usage.completion_tokens == MAX_TOKENS, f"usage {usage}")
    check(finish == "length", f"finish_reason {finish}")
    return text


def grpc_stream(url, prompt_ids):
    """One streaming request over ModelStreamInfer; returns (text, output ids)."""
    return u.grpc_stream(url, prompt_ids, MAX_TOKENS)


def main():
    work = tempfile.mkdtemp(prefix="tessera-serve-e2e-")
    model_dir = os.path.join(work, "model")
    subprocess.run([TESSERA, "make-model", "--out", model_dir] + MODEL_SHAPE, check=True,
                   stdout=subprocess.DEVNULL)
    serve = subprocess.Popen(
        [TESSERA, "serve", model_dir, "--served-model-name", MODEL, "--port", "0", "--grpc-port", "0", "--num-replicas", "2",
         "--threads", "1", "--work-dir", work, "--max-num-seqs", "32", "--kv-cache-gib", "0.25",
         "--drain-timeout", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = SERVE_LOG
    reader = threading.Thread(target=lambda: [lines.append(l) for l in serve.stdout], daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120
        while not any("tessera serve: ready" in l for l in lines):
            check(serve.poll() is None, "serve exited early:\n" + "".join(lines))
            check(time.time() < deadline, "serve not ready in 120 s:\n" + "".join(lines))
            time.sleep(0.1)
        ports = json.load(open(os.path.join(work, "coordinator-ports.json")))
        base = f"http://127.0.0.1:{ports['http']}/v1"
        grpc_url = f"127.0.0.1:{ports['grpc']}"
        # Both replicas registered?
        deadline = time.time() + 60
        while True:
            metrics = urllib.request.urlopen(base.replace("/v1", "/metrics")).read().decode()
            if 'tessera_replicas{role="mixed"} 2' in metrics:
                break
            check(time.time() < deadline, "two replicas never registered:\n" + metrics)
            time.sleep(0.2)

        # 1. 64 concurrent streams, identical to `tessera generate`.
        prompts = [[1 + (7 * i) % 400, 2 + (13 * i) % 300, 3 + i] for i in range(64)]
        reference = generate_reference(model_dir, prompts)
        http = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=120)
        # The text of the reference ids, as the server detokenizes them (HTTP non-streaming).
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            futures = {}
            for i, p in enumerate(prompts):
                if i % 2 == 0:
                    futures[i] = pool.submit(http_stream, http, p)
                else:
                    futures[i] = pool.submit(grpc_stream, grpc_url, p)
            outputs = {i: f.result(timeout=300) for i, f in futures.items()}
        for i, p in enumerate(prompts):
            if i % 2 == 1:
                text, ids = outputs[i]
                check(ids == reference[i], f"prompt {i}: gRPC ids {ids} != generate {reference[i]}")
        # HTTP outputs are text: compare with the gRPC text of the same prompt (ids checked above).
        for i in range(0, 64, 2):
            text, ids = grpc_stream(grpc_url, prompts[i])
            check(ids == reference[i], f"prompt {i}: ids {ids} != generate {reference[i]}")
            check(outputs[i] == text, f"prompt {i}: HTTP text {outputs[i]!r} != gRPC {text!r}")
        print("64 concurrent streams match tessera generate", flush=True)

        # 2. Freeze a replica while it serves. Every long request has streamed its first token
        # before the freeze, and each takes seconds more to finish, so those on replica-0 are
        # provably mid-stream: exactly they must fail, retryably; the rest must finish.
        worker = u.worker_pid(work, "replica-0")
        started = threading.Semaphore(0)

        def long_http(i):
            try:
                stream = http.completions.create(model=MODEL, prompt=[5, 6, 7 + i],
                                                 max_tokens=LONG_TOKENS, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True},
                                                 stream_options={"include_usage": True})
                first, finish, tokens = True, None, None
                for chunk in stream:
                    if first:
                        started.release()
                        first = False
                    for choice in chunk.choices:
                        finish = choice.finish_reason or finish
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                return ("ok", finish, tokens)
            except openai.APIError as e:
                return ("error", str(e))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            long_requests = [pool.submit(long_http, i) for i in range(8)]
            for _ in range(8):
                check(started.acquire(timeout=60), "the long requests did not all start")
            metrics = urllib.request.urlopen(base.replace("/v1", "/metrics")).read().decode()
            os.kill(worker, signal.SIGSTOP)
            killed_at = time.time()
            # Out of rotation within the lease (plus the check interval).
            while True:
                text = urllib.request.urlopen(base.replace("/v1", "/metrics")).read().decode()
                if 'tessera_replicas{role="mixed"} 1' in text:
                    break
                check(time.time() - killed_at < LEASE_S * 3 + 2,
                      "the frozen replica is still in rotation")
                time.sleep(0.1)
            out_after = time.time() - killed_at
            results = [f.result(timeout=300) for f in long_requests]
        on_replica = [u.metric_value(metrics, "tessera_replica_requests_in_flight{replica="
                                     f'"replica-{r}",role="mixed"}}') for r in (0, 1)]
        check(sum(on_replica) == 8 and min(on_replica) > 0,
              "8 requests on two idle replicas were not spread over both (requests in flight "
              f"on replica-0, replica-1: {on_replica})")
        frozen = int(on_replica[0])
        errors = [r for r in results if r[0] == "error"]
        check(len(errors) == frozen,
              f"{frozen} requests were on the frozen replica, {len(errors)} failed: {results}")
        for e in errors:
            check("retry" in e[1] and "replica-0" in e[1], f"not a retryable error: {e}")
        for r in results:
            check(r[0] == "error" or r[1:] == ("length", LONG_TOKENS),
                  f"a request on the live replica did not finish: {r}")
        os.kill(worker, signal.SIGKILL)
        print(f"frozen replica out of rotation after {out_after:.1f} s; "
              f"{len(errors)} of 8 in-flight requests (those on it) failed retryably", flush=True)
        for i in range(6):
            r = http.completions.create(model=MODEL, prompt=[9, 10 + i], max_tokens=4)
            check(r.usage.completion_tokens == 4, f"after the kill: {r}")
        print("new requests served by the surviving replica", flush=True)
    finally:
        # 3. SIGINT stops everything.
        if serve.poll() is None:
            serve.send_signal(signal.SIGINT)
            try:
                code = serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
                fail("serve did not stop within 60 s of SIGINT")
    reader.join(timeout=5)
    # serve exits 1 because a child (the killed replica) died: that is reported, not hidden.
    check(any("replica-0" in l and "killed by signal 9" in l for l in lines),
          "serve did not report the killed replica:\n" + "".join(lines))
    left = subprocess.run(["pgrep", "-f", work], capture_output=True, text=True).stdout.split()
    check(not left, f"processes left behind: {left}")
    print("PASS", flush=True)


if __name__ == "__main__":
    u.run(main)
