#!/usr/bin/env python3
"""Smoke run of Triton's perf_analyzer (PyPI `perf-analyzer`) against tessera's KServe API.

  triton_perf_analyzer_test.py [--perf-analyzer PATH] --url HOST:PORT

Streams 2 concurrent requests for a few seconds with the vLLM backend's tensors and checks that
perf_analyzer measured a throughput. Exits 77 (skip) when no runnable perf_analyzer is found: the
PyPI wheels are built for glibc >= 2.38 and GCC 13's libstdc++ (manylinux_2_38), so on older
systems (Debian 12: glibc 2.36) pip installs the 0.1.0 placeholder, which has no binary.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def find_perf_analyzer(explicit):
    if explicit:
        return explicit
    found = shutil.which("perf_analyzer")
    if found:
        return found
    try:  # the wheel keeps the binary next to its python wrapper
        import perf_analyzer  # noqa: F401
        candidate = os.path.join(os.path.dirname(perf_analyzer.__file__), "bin", "perf_analyzer")
        if os.path.exists(candidate):
            return candidate
    except ImportError:
        pass
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--perf-analyzer", default=None)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--url", required=True)
    args = parser.parse_args()

    binary = find_perf_analyzer(args.perf_analyzer)
    if binary is None:
        print("SKIP: no perf_analyzer binary (pip install perf-analyzer needs glibc >= 2.38)",
              file=sys.stderr)
        return 77
    probe = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()[:1]
        print(f"SKIP: {binary} does not run here: {reason}", file=sys.stderr)
        return 77

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "input.json")
        with open(data, "w") as f:
            json.dump({"data": [{"text_input": ["The quick brown fox"], "stream": [True],
                                 "sampling_parameters": [json.dumps({"max_tokens": 16})]}]}, f)
        cmd = [binary, "-m", args.model, "-i", "grpc", "--streaming", "-u", args.url,
               "--input-data", data, "--concurrency-range", "2", "--measurement-interval", "2000",
               "--max-trials", "3", "--stability-percentage", "999"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    print(run.stdout)
    print(run.stderr, file=sys.stderr)
    if run.returncode != 0:
        print(f"FAIL: perf_analyzer exited with {run.returncode}", file=sys.stderr)
        return 1
    if "Throughput:" not in run.stdout or "Concurrency: 2" not in run.stdout:
        print("FAIL: perf_analyzer reported no throughput", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
