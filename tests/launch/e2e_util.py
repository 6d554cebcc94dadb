"""Helpers shared by the end-to-end tests that start `tessera serve` and drive it with the real
clients (tritonclient for token ids over KServe v2 gRPC)."""
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

MODEL = "tessera-demo"
SERVE_LOG = []  # serve's output, printed when a test fails


def fail(message):
    print("FAIL:", message, flush=True)
    print("---- tessera serve output (last 80 lines) ----")
    print("".join(SERVE_LOG[-80:]), flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def run(main):
    """Runs a test's main; an exception (a client's error) fails the test with what the cluster
    printed."""
    try:
        main()
    except Exception as e:
        fail(f"{type(e).__name__}: {e}")


def generate_reference(tessera, model_dir, prompts, max_tokens):
    """Greedy tokens from `tessera generate` (single process), one list per prompt."""
    cmd = [tessera, "generate", "--model", model_dir, "--max-tokens", str(max_tokens),
           "--ignore-eos", "--threads", "1", "--output", "json"]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    check(len(results) == len(prompts), f"generate printed {len(results)} results: {out}")
    return [r["token_ids"] for r in results]


def grpc_stream(url, prompt_ids, max_tokens, want_ids=True, on_first=None, headers=None):
    """One streaming request over ModelStreamInfer; returns (text, output ids). `on_first` is
    called when the first response arrives; `headers` go as the stream's metadata."""
    results = queue.Queue()
    client = grpcclient.InferenceServerClient(url=url)
    client.start_stream(callback=lambda result, error: results.put((result, error)),
                        headers=headers)
    ids = grpcclient.InferInput("input_ids", [len(prompt_ids)], "INT32")
    ids.set_data_from_numpy(np.array(prompt_ids, dtype=np.int32))
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array([json.dumps(
        {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}).encode()],
        dtype=np.object_))
    ret_ids = grpcclient.InferInput("return_output_ids", [1], "BOOL")
    ret_ids.set_data_from_numpy(np.array([want_ids]))
    client.async_stream_infer(MODEL, [ids, stream, params, ret_ids], request_id="r",
                              enable_empty_final_response=True)
    text, out_ids = "", []
    while True:
        result, error = results.get(timeout=120)
        if error is not None:
            client.stop_stream()
            raise RuntimeError(str(error))
        if on_first is not None:
            on_first()
            on_first = None
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        chunk = result.as_numpy("text_output")
        if chunk is not None:
            text += b"".join(chunk).decode()
        got = result.as_numpy("output_ids")
        if got is not None:
            out_ids += got.tolist()
        if final:
            break
    client.stop_stream()
    return text, out_ids


def start_serve(tessera, work, args, ready_s=120, env=None):
    """Starts `tessera serve` with `args` in `work` (and `env`, default ours); returns (process,
    ports dict)."""
    serve = subprocess.Popen(
        [tessera, "serve", "--port", "0", "--grpc-port", "0", "--threads", "1", "--work-dir", work]
        + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    threading.Thread(target=lambda: [SERVE_LOG.append(l) for l in serve.stdout],
                     daemon=True).start()
    deadline = time.time() + ready_s
    while not any("tessera serve: ready" in l for l in SERVE_LOG):
        check(serve.poll() is None, "serve exited early")
        check(time.time() < deadline, f"serve not ready in {ready_s} s")
        time.sleep(0.1)
    return serve, json.load(open(os.path.join(work, "coordinator-ports.json")))


def start_launch(argv, ready_s=120, **popen):
    """Starts `tessera launch` (argv), its output into SERVE_LOG; returns the process once it
    printed that it is ready (and the rest of that message)."""
    launch = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              **popen)
    threading.Thread(target=lambda: [SERVE_LOG.append(l) for l in launch.stdout],
                     daemon=True).start()
    deadline = time.time() + ready_s
    while not any("tessera launch: ready" in l for l in SERVE_LOG):
        if launch.poll() is not None:
            fail("tessera launch exited early")
        if time.time() >= deadline:
            interrupt(launch, "tessera launch")
            fail(f"tessera launch not ready in {ready_s} s")
        time.sleep(0.1)
    time.sleep(0.2)  # the rest of the ready message
    return launch


def metrics(ports):
    return urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/metrics").read().decode()


def metric_value(text, name_and_labels):
    """The value of the sample `name_and_labels` (exact, e.g. 'x{a="b"}'), or None."""
    for line in text.splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def interrupt(proc, what):
    """SIGINT to `proc` (unless it ended); its exit code. Fails when it runs 60 s more."""
    import signal
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        fail(f"{what} did not stop within 60 s of SIGINT")


def check_nothing_left(work):
    """No process whose command line names `work` is running (after a moment to exit)."""
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", work], capture_output=True, text=True).stdout.split()
    check(not left, f"processes left behind: {left}")


def stop_serve(serve, work):
    """SIGINT, then checks that nothing of `work` is left running."""
    interrupt(serve, "serve")
    check_nothing_left(work)


def worker_pid(work, replica):
    """The pid of the worker process named `replica` of the serve in `work`."""
    pids = subprocess.run(["pgrep", "-f", f"replica-name {replica}"],
                          capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            cmdline = open(f"/proc/{pid}/cmdline").read()
        except OSError:
            continue
        if work in cmdline and "worker" in cmdline:
            found.append(int(pid))
    check(len(found) == 1, f"{replica} worker pid not found: {pids}")
    return found[0]
