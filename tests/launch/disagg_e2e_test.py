#!/usr/bin/env python3
"""End to end, disaggregated: `tessera serve --num-prefill 1 --num-decode 2` (a coordinator, a
prefill replica and two decode replicas as processes on loopback) with the KV cache moving between
them over the given transport (grpc or ucx).

1. 24 concurrent streaming requests over KServe v2 gRPC, prompts of one to three KV blocks: every
   output equals `tessera generate` on the same prompt (so every KV byte arrived where it belongs).
   Then 3 sampled completions under a JSON schema (structured outputs) parse and conform: the
   grammar holds across the handoff.
2. A decode replica is killed (SIGKILL) while 6 long requests stream: every request still
   completes with exactly the tokens of `tessera generate` — none missing, none repeated — because
   the coordinator re-prefills prompt + tokens sent and continues on the other decode replica.
3. Every KV block is back on the surviving replicas (none reserved or being sent), and SIGINT
   stops the cluster cleanly.

With a layout (serve's --prefill-tp/--prefill-pp/--decode-tp/--decode-pp, e.g. a prefill replica of
TP 2 and a decode replica of PP 2, ranks as threads of each worker process), the cluster has one
replica per pool and runs 1 and 3: every rank's slice of the KV must reach the decode ranks that
hold those layers and heads for the outputs to match.

Usage: disagg_e2e_test.py TESSERA_BINARY grpc|ucx [LAYOUT FLAGS...]
"""
import concurrent.futures
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request

import e2e_util as u

TESSERA = os.path.abspath(sys.argv[1])
TRANSPORT = sys.argv[2]
LAYOUT = sys.argv[3:]  # serve flags giving each pool its TP/PP
LONG = 900  # tokens of the requests that outlive a decode replica (the demo context is 1024)


def main():
    work = tempfile.mkdtemp(prefix=f"tessera-disagg-{TRANSPORT}-")
    decode_replicas = 1 if LAYOUT else 2
    serve, ports = u.start_serve(TESSERA, work, [
        "--num-prefill", "1", "--num-decode", str(decode_replicas), "--kv-transport", TRANSPORT,
        "--max-num-seqs", "32", "--kv-cache-gib", "0.125", "--drain-timeout", "5"] + LAYOUT)
    try:
        grpc_url = f"127.0.0.1:{ports['grpc']}"
        model_dir = os.path.join(work, "demo-model")
        text = u.metrics(ports)
        u.check(u.metric_value(text, 'tessera_replicas{role="prefill"}') == 1 and
                u.metric_value(text, 'tessera_replicas{role="decode"}') == decode_replicas,
                "pools not registered:\n" + text)

        # 1. Concurrent requests, identical to a single-process run.
        prompts = [[1 + (7 * i + j) % 500 for j in range(5 + 2 * i)] for i in range(24)]
        reference = u.generate_reference(TESSERA, model_dir, prompts, 12)
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(u.grpc_stream, grpc_url, p, 12) for p in prompts]
            outputs = [f.result(timeout=300) for f in futures]
        for i, (_, ids) in enumerate(outputs):
            u.check(ids == reference[i], f"prompt {i}: ids {ids} != generate {reference[i]}")
        print(f"24 disaggregated streams over {TRANSPORT} {' '.join(LAYOUT)} match tessera "
              "generate", flush=True)
        structured_outputs(ports)
        if not LAYOUT:
            kill_a_decode_replica(work, grpc_url, model_dir, ports)
        wait_for_every_block(ports, 24 if LAYOUT else 30)
    finally:
        u.stop_serve(serve, work)
    print("".join(l for l in u.SERVE_LOG if "ready" in l), flush=True)
    print("PASS", flush=True)


def kill_a_decode_replica(work, grpc_url, model_dir, ports):
    """2. Kill a decode replica mid-stream; the streams go on elsewhere."""
    long_prompts = [[9, 8, 7, 6, 5, 4, 3, 2, 1, 10 + i] * 2 for i in range(6)]
    long_reference = u.generate_reference(TESSERA, model_dir, long_prompts, LONG)
    started = threading.Semaphore(0)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(u.grpc_stream, grpc_url, p, LONG, True, started.release)
                   for p in long_prompts]
        # Kill decode-0 while it holds some of the streams (the coordinator's live in-flight
        # gauge says so; the demo model decodes 900 tokens in well under a second).
        u.check(started.acquire(timeout=60), "the long requests did not start")
        gauge = 'tessera_replica_requests_in_flight{replica="decode-0",role="decode"}'
        while (u.metric_value(u.metrics(ports), gauge) or 0) == 0:
            u.check(not all(f.done() for f in futures),
                    "the long streams ended before decode-0 held one")
            time.sleep(0.005)
        os.kill(u.worker_pid(work, "decode-0"), signal.SIGKILL)
        long_outputs = [f.result(timeout=300) for f in futures]
    for i, (_, ids) in enumerate(long_outputs):
        u.check(ids == long_reference[i],
                f"long prompt {i}: {len(ids)} ids differ from generate's "
                f"{len(long_reference[i])} (first difference at "
                f"{next((k for k, (a, b) in enumerate(zip(ids, long_reference[i])) if a != b), min(len(ids), len(long_reference[i])))})")
    text = u.metrics(ports)
    recovered = sum(u.metric_value(text, 'tessera_disaggregated_recoveries_total{model_name='
                                    f'"{u.MODEL}",reason="{r}"}}') or 0
                    for r in ("decode_failed", "decode_lost", "decode_refused"))
    print(f"decode-0 killed: all 6 streams completed exactly; {recovered:.0f} recoveries",
          flush=True)
    u.check(recovered >= 1, "no stream was moved off the killed decode replica")


def structured_outputs(ports):
    """1b. A JSON schema holds across the handoff: the prefill replica samples the first token
    under the grammar, the decode replica takes it and goes on under the same grammar."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer"}},
              "required": ["ok", "n"]}
    body = {"model": u.MODEL, "prompt": "the cat sat", "max_tokens": 80, "n": 3,
            "temperature": 1.0, "seed": 11, "response_format": {
                "type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}
    request = urllib.request.Request(f"http://127.0.0.1:{ports['http']}/v1/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        out = json.loads(response.read())
    for choice in out["choices"]:
        u.check(choice["finish_reason"] == "stop", f"did not end: {choice}")
        value = json.loads(choice["text"])
        u.check(set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and
                isinstance(value["n"], int), f"not the schema's: {choice['text']!r}")
    print("3 json_schema completions across the prefill/decode handoff parse and conform",
          flush=True)


def wait_for_every_block(ports, requests):
    """3. Every block back (heartbeats carry the replicas' block counts)."""
    deadline = time.time() + 20
    while True:
        text = u.metrics(ports)
        busy = [l for l in text.splitlines() if l.startswith("tessera_kv_blocks{")
                and ('state="reserved"' in l or 'state="exporting"' in l or
                     'state="in_use"' in l) and not l.endswith(" 0")]
        if not busy:
            break
        u.check(time.time() < deadline, f"KV blocks still held: {busy}")
        time.sleep(0.5)
    u.check((u.metric_value(text, f'tessera_disaggregated_requests_total{{model_name="{u.MODEL}"}}') or 0) >= requests,
            "requests were not disaggregated:\n" + text)


if __name__ == "__main__":
    u.run(main)
