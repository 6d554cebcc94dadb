#!/usr/bin/env python3
"""Runs a client against fake_kserve_server (two processes, loopback).

  run_triton_e2e.py SERVER_BINARY [SERVER_ARGS...] -- CLIENT_COMMAND...

Starts the server, reads its "PORT <n>" line, runs CLIENT_COMMAND with "--url 127.0.0.1:<n>"
appended, then closes the server's stdin (it stops) and waits for it. Exits with the client's
status (77 = skipped, as ctest's SKIP_RETURN_CODE), or 1 when the server misbehaves.
"""
import subprocess
import sys
import threading


def main(argv):
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    server_cmd, client_cmd = argv[1:split], argv[split + 1:]
    server = subprocess.Popen(server_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    # The first line, with a bound on how long it may take.
    line = []
    reader = threading.Thread(target=lambda: line.append(server.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if not line or not line[0].startswith("PORT "):
        print(f"fake server did not report its port: {line!r}", file=sys.stderr)
        server.kill()
        return 1
    port = int(line[0].split()[1])
    try:
        client = subprocess.run(client_cmd + ["--url", f"127.0.0.1:{port}"], timeout=150)
        rc = client.returncode
    except subprocess.TimeoutExpired:
        print("client timed out", file=sys.stderr)
        rc = 1
    server.stdin.close()
    try:
        server_rc = server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        print("fake server did not stop within 15 s of stdin closing", file=sys.stderr)
        server.kill()
        return 1
    if server_rc != 0:
        print(f"fake server exited with {server_rc}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
