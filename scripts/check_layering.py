#!/usr/bin/env python3
"""Fails when an #include breaks tessera's layering (docs/architecture.md).

Rules:
  1. A folder includes only folders on lower levels (and itself).
  2. Vendor headers (cuda, nccl, mpi, ucp/ucs, grpcpp, cublas) appear only in backend subfolders
     (kernels/cuda, parallel/comm/nccl, parallel/comm/mpi, kvtransfer/ucx, kvtransfer/grpc, */rpc/,
     coordinator/api) and in launch/ (the composition root) and tests.
  3. Interfaces (a folder's top-level files) include no implementation subfolder of their own
     folder's backends (e.g. kernels/ops.h must not include kernels/cpu/...); only launch/ and
     tests name concrete backends.
Prints each violation as file:line: message; exit status 1 if any.
"""
import os
import re
import sys

LEVELS = {
    "common": 0, "proto": 0,
    "model": 1, "kernels": 1, "parallel/comm": 1, "kvtransfer": 1,
    "parallel": 2,
    "worker": 3, "coordinator": 3,
    "bench": 4,
    "launch": 5,  # the composition root: wires every folder, bench's command included
}
VENDOR = re.compile(r'^(cuda|cuda_runtime|cuda_fp16|cuda_bf16|cublas|cublasLt|nccl|mpi|ucp|ucs|uct|grpcpp|grpc)[/._]')
VENDOR_OK = re.compile(r'^(kernels/cuda|parallel/comm/nccl|parallel/comm/mpi|kvtransfer/ucx|kvtransfer/grpc|coordinator/api|launch|bench|tests)(/|$)|/rpc(/|$)')
BACKEND_DIRS = re.compile(r'^(kernels/(cpu|cuda)|parallel/comm/(inproc|mpi|nccl)|kvtransfer/(inproc|grpc|ucx))(/|$)')
INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')
SOURCES = (".h", ".cc", ".cu", ".cuh")


def module_of(path):
    """The most specific LEVELS key that `path` (relative, with /) lies in, or None."""
    best = None
    for key in LEVELS:
        if path == key or path.startswith(key + "/"):
            if best is None or len(key) > len(best):
                best = key
    return best


def check(root):
    errors = []
    for top in sorted(set(k.split("/")[0] for k in LEVELS)):
        base = os.path.join(root, top)
        for dirpath, _, files in os.walk(base):
            for name in sorted(files):
                if not name.endswith(SOURCES):
                    continue
                path = os.path.relpath(os.path.join(dirpath, name), root)
                src_mod = module_of(path)
                if src_mod is None:
                    continue
                with open(os.path.join(root, path), encoding="utf-8", errors="replace") as f:
                    lines = f.readlines()
                for lineno, line in enumerate(lines, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    target = m.group(2)
                    where = f"{path}:{lineno}"
                    if VENDOR.match(target) and not VENDOR_OK.search(os.path.dirname(path)):
                        errors.append(f"{where}: vendor header <{target}> outside a backend folder")
                        continue
                    if m.group(1) != '"':
                        continue
                    dst_mod = module_of(target)
                    if dst_mod is None:
                        continue
                    if LEVELS[dst_mod] > LEVELS[src_mod] or (
                            LEVELS[dst_mod] == LEVELS[src_mod] and dst_mod != src_mod
                            and not dst_mod.startswith(src_mod + "/")):
                        errors.append(f"{where}: {src_mod} (L{LEVELS[src_mod]}) includes "
                                      f"{target} ({dst_mod}, L{LEVELS[dst_mod]})")
                        continue
                    if BACKEND_DIRS.match(target) and not path.startswith(("launch/", "bench/")):
                        src_backend = BACKEND_DIRS.match(path)
                        dst_backend = BACKEND_DIRS.match(target).group(0).rstrip("/")
                        if not src_backend or not path.startswith(dst_backend):
                            errors.append(f"{where}: names the concrete backend {target}; only "
                                          f"launch/ and tests may")
    return errors


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    errors = check(root)
    for e in errors:
        print(e)
    if errors:
        print(f"check_layering: {len(errors)} violation(s)")
        return 1
    print("check_layering: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
