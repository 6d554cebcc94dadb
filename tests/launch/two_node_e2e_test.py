#!/usr/bin/env python3
"""End to end across two hosts: two network namespaces made by this test ("node-a" and "node-b",
each with its own network stack and hostname, joined by a veth link, 10.77.0.1 and 10.77.0.2),
with Open MPI's rsh launcher reaching node-b through `ip netns exec` instead of ssh. They share
this machine's kernel, files and cores: what crosses the link is what would cross a network
between two machines; nothing here measures a real network.

1. `launch/mpirun/generate.sh -tp 2 -pp 2` with a hostfile of both nodes: ranks 0-1 (stage 0) on
   node-a, ranks 2-3 (stage 1) on node-b, activations between the stages over MPI's TCP transport
   across the link. Tokens equal the single-process `tessera generate`.
2. `tessera launch` of a topology whose prefill pool (TP 2) names node-a and whose decode pool
   (TP 2) names node-b, the coordinator on node-a (its registry on every interface, its APIs on
   node-a's address for IPv4 and on every interface for IPv6), KV over the transport given (grpc
   or ucx). Clients on node-b: 8 concurrent gRPC streams equal `tessera generate`, the decode
   replica received its KV across the link, and the printed URLs name a routable host.
   `tessera bench` on node-b completes every request over both APIs.
3. A worker on node-b that listens on loopback is refused by the coordinator with a message that
   says why and what to pass, and exits 1.
4. node-b's link goes down while 4 streams decode there: each ends with a 503 naming the lost
   replica (its lease lapses) within 30 s, none hangs; once the link is back, the cluster serves
   again.
5. SIGINT stops the cluster on both nodes: `tessera launch` exits 0 and no process is left.
6. (TESSERA_TEST_GLOO=1) A PP 2 replica's ranks on node-a and node-b without mpirun, ranked as
   LeaderWorkerSet pods, meet over Gloo: tokens equal one process.

Needs root (network namespaces); without it, or without `ip`/`unshare`/`mpirun`, it exits 77
(CTest: skipped) and says why.

With ipv6, the coordinator, the workers, the KV transport and the Gloo rendezvous use the nodes'
IPv6 addresses (fd77::1, fd77::2; Open MPI's own traffic stays on IPv4).

Usage: two_node_e2e_test.py TESSERA_BINARY grpc|ucx [ipv4|ipv6]
"""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import e2e_util as u

TESSERA = os.path.abspath(sys.argv[1])
TRANSPORT = sys.argv[2]
# The family of the addresses the cluster's processes give each other (the link has both; Open
# MPI's own traffic stays on IPv4).
FAMILY = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] in ("ipv4", "ipv6") else "ipv4"
SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP = 77
TAG = f"ts{os.getpid()}"
NODES = {"node-a": (f"{TAG}a", "10.77.0.1"), "node-b": (f"{TAG}b", "10.77.0.2")}
IPV6 = {"node-a": "fd77::1", "node-b": "fd77::2"}


def addr(node):
    """The address of `node` that the cluster uses."""
    return IPV6[node] if FAMILY == "ipv6" else NODES[node][1]


def host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
LINK = {"node-a": f"{TAG}va", "node-b": f"{TAG}vb"}


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True)


def on(node, argv, **kwargs):
    """argv run on `node`: in its network namespace, under its hostname."""
    netns = NODES[node][0]
    return ["ip", "netns", "exec", netns, "unshare", "--uts", "/bin/sh", "-c",
            f'hostname {node} && exec "$@"', "sh"] + list(argv)


def make_nodes():
    # Namespaces of an earlier run that was killed before it could remove them.
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if re.fullmatch(r"ts\d+[ab]", name) and not os.path.exists(f"/proc/{name[2:-1]}"):
            for pid in sh("ip", "netns", "pids", name).stdout.split():
                sh("kill", "-9", pid)
            sh("ip", "netns", "del", name)
    for node, (netns, _) in NODES.items():
        r = sh("ip", "netns", "add", netns)
        if r.returncode != 0:
            print(f"SKIP: cannot make network namespaces ({r.stderr.strip()})", flush=True)
            sys.exit(SKIP)
    r = sh("ip", "link", "add", LINK["node-a"], "type", "veth", "peer", "name", LINK["node-b"])
    u.check(r.returncode == 0, f"ip link add: {r.stderr}")
    for node, (netns, address) in NODES.items():
        # A link that goes down keeps its IPv6 addresses, as IPv4 ones (a cable pulled, not an
        # interface reconfigured).
        keep = f"/proc/sys/net/ipv6/conf/{LINK[node]}/keep_addr_on_down"
        for argv in (["ip", "link", "set", LINK[node], "netns", netns],
                     ["ip", "netns", "exec", netns, "sh", "-c", f"echo 1 > {keep}"],
                     ["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", LINK[node]],
                     ["ip", "-n", netns, "addr", "add", f"{IPV6[node]}/64", "dev", LINK[node],
                      "nodad"],
                     ["ip", "-n", netns, "link", "set", LINK[node], "up"],
                     ["ip", "-n", netns, "link", "set", "lo", "up"]):
            r = sh(*argv)
            u.check(r.returncode == 0, f"{' '.join(argv)}: {r.stderr}")


def remove_nodes():
    for netns, _ in NODES.values():
        # What is left in a namespace (a failed test's processes) goes with it.
        for pid in sh("ip", "netns", "pids", netns).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", netns)  # the veth pair goes with it


def link_bytes():
    """Bytes node-a sent to node-b and received from it over the link."""
    text = sh("ip", "-n", NODES["node-a"][0], "-s", "-j", "link", "show", LINK["node-a"]).stdout
    stats = json.loads(text)[0]["stats64"]
    return stats["tx"]["bytes"], stats["rx"]["bytes"]


def write_agent(work):
    """Open MPI's rsh agent: `agent HOST COMMAND...` runs COMMAND on HOST, as ssh would."""
    agent = os.path.join(work, "agent.sh")
    cases = "\n".join(f"  {node}) netns={netns} ;;" for node, (netns, _) in NODES.items())
    with open(agent, "w") as f:
        f.write(f"""#!/bin/sh
host=$1; shift
case "$host" in
{cases}
  *) echo "agent: unknown host $host" >&2; exit 255 ;;
esac
echo "$host" >> {work}/agent.log
exec ip netns exec "$netns" unshare --uts /bin/sh -c "hostname $host && $*"
""")
    os.chmod(agent, 0o755)
    return agent


def pipeline_across_nodes(work, agent, model):
    prompts = [[1, 2, 3], [4, 5], list(range(5, 31))]
    reference = u.generate_reference(TESSERA, model, prompts, 6)
    hosts = os.path.join(work, "hosts")
    with open(hosts, "w") as f:
        f.write("node-a slots=2\nnode-b slots=2\n")
    env = dict(os.environ, TESSERA=TESSERA, HOSTFILE=hosts, MPIRUN_ARGS=(
        f"--mca plm_rsh_agent {agent} --mca btl self,vader,tcp --display-map"))
    argv = [os.path.join(SOURCE, "launch/mpirun/generate.sh"), "-tp", "2", "-pp", "2",
            "--model", model, "--max-tokens", "6", "--ignore-eos", "--output", "json",
            "--max-num-batched-tokens", "8", "--max-num-seqs", "4"]
    for p in prompts:
        argv += ["--prompt-ids", ",".join(map(str, p))]
    before = link_bytes()
    r = subprocess.run(on("node-a", argv), capture_output=True, text=True, env=env, timeout=180)
    after = link_bytes()
    u.check(r.returncode == 0, f"generate.sh across two nodes exited {r.returncode}:\n{r.stderr}")
    got = [json.loads(l)["token_ids"] for l in r.stdout.splitlines() if l.startswith("{")]
    u.check(got == reference, f"-tp 2 -pp 2 over two nodes: {got} != one process {reference}")
    launched = open(os.path.join(work, "agent.log")).read().split()
    u.check(launched == ["node-b"], f"mpirun reached {launched}, not node-b once")
    # Stage 1 (ranks 2 and 3) ran on node-b (mpirun's map): processes on two nodes cannot share
    # memory, so the stages' messages crossed the link.
    placed, node = {}, None
    for line in r.stdout.splitlines():
        if m := re.search(r"Data for node: (\S+)", line):
            node = m.group(1)
        elif m := re.search(r"Process rank: (\d+)", line):
            placed[int(m.group(1))] = node
    u.check(placed == {0: "node-a", 1: "node-a", 2: "node-b", 3: "node-b"},
            f"ranks placed {placed}, not stage 0 on node-a and stage 1 on node-b:\n{r.stdout}")
    sent, received = after[0] - before[0], after[1] - before[1]
    print(f"1. -tp 2 -pp 2 with stage 0 on node-a and stage 1 on node-b equals one process "
          f"({sent} bytes a->b, {received} b->a, Open MPI's own included)", flush=True)


def gloo_pipeline_across_nodes(work, model):
    """A PP 2 replica's ranks on two nodes without mpirun, ranked as LeaderWorkerSet pods."""
    argv = [TESSERA, "generate", "--model", model, "--max-tokens", "6", "--ignore-eos",
            "--output", "json", "--prompt-ids", "1,2,3", "--prompt-ids", ",".join(
                map(str, range(5, 31))), "--max-num-batched-tokens", "8", "--max-num-seqs", "4",
            "-pp", "2", "--pp-steps-in-flight", "2", "--comm-timeout-s", "30"]
    reference = u.generate_reference(TESSERA, model, [[1, 2, 3], list(range(5, 31))], 6)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))}
    env.update(LWS_GROUP_SIZE="2", LWS_LEADER_ADDRESS=addr("node-a"))
    ranks = [subprocess.Popen(on(node, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(env, LWS_WORKER_INDEX=str(rank)))
             for rank, node in enumerate(("node-a", "node-b"))]
    outputs = [r.communicate(timeout=120) for r in ranks]
    u.check(all(r.returncode == 0 for r in ranks), "gloo ranks exited " + "; ".join(
        f"rank {rank}: {r.returncode}, {err[-2000:]}"
        for rank, (r, (_, err)) in enumerate(zip(ranks, outputs))))
    got = [json.loads(l)["token_ids"] for l in outputs[0][0].splitlines() if l.startswith("{")]
    u.check(got == reference, f"gloo -pp 2 over two nodes: {got} != one process {reference}")
    print("6. -pp 2 over Gloo (LeaderWorkerSet ranks, no mpirun) across node-a and node-b equals "
          "one process", flush=True)


def get(url):
    return urllib.request.urlopen(url, timeout=10).read().decode()


def client_main(grpc_url, metrics_url, model, reference_file):
    """On node-b: the clients (see main)."""
    prompts, reference = json.load(open(reference_file))
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        outputs = [f.result(timeout=120) for f in
                   [pool.submit(u.grpc_stream, grpc_url, p, 10) for p in prompts]]
    for i, (_, ids) in enumerate(outputs):
        u.check(ids == reference[i], f"prompt {i}: ids {ids} != generate {reference[i]}")
    # Metrics follow the replicas' heartbeats.
    deadline = time.time() + 20
    while True:
        text = get(metrics_url)
        served = u.metric_value(
            text, f'tessera_disaggregated_requests_total{{model_name="{u.MODEL}"}}') or 0
        received = u.metric_value(
            text, 'tessera_kv_transfer_bytes_total{replica="decode-0",direction="received"}') or 0
        if served >= len(prompts) and received > 0:
            break
        u.check(time.time() < deadline, f"not disaggregated across the nodes:\n{text}")
        time.sleep(0.5)
    print(f"2. {len(prompts)} streams from node-b through prefill on node-a and decode on "
          f"node-b equal tessera generate; the decode replica received {int(received)} KV "
          f"bytes", flush=True)


def bench_from_node_b(work, coordinator, ports):
    """`tessera bench` on node-b against the coordinator on node-a, over both APIs."""
    for backend, port in (("openai", ports["http"]), ("tessera-grpc", ports["grpc"])):
        result = os.path.join(work, f"bench-{backend}.json")
        r = subprocess.run(on("node-b", [
            TESSERA, "bench", "--backend", backend, "--host", coordinator, "--port", str(port),
            "--metrics-url", f"http://{host_port(coordinator, ports['http'])}/metrics",
            "--dataset-name", "random", "--num-prompts", "16", "--random-input-len", "32",
            "--random-output-len", "8", "--request-rate", "inf", "--ignore-eos", "--seed", "1",
            "--disable-tqdm", "--result-file", result]), capture_output=True, text=True,
            timeout=120)
        u.check(r.returncode == 0, f"bench {backend} from node-b exited {r.returncode}:\n"
                f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        run = json.load(open(result))["runs"][0]
        u.check(run["completed"] == 16 and run["failed"] == 0 and run["total_output_tokens"] == 128,
                f"bench {backend} from node-b: {json.dumps(run)[:2000]}")
    print("2b. tessera bench on node-b against the coordinator on node-a: 16 of 16 requests over "
          "OpenAI HTTP and over KServe gRPC", flush=True)


def completion(url, prompt, max_tokens, stream):
    body = json.dumps({"model": u.MODEL, "prompt": prompt, "max_tokens": max_tokens,
                       "stream": stream, "ignore_eos": True})
    return ["curl", "-sN", "-m", "120", url, "-H", "Content-Type: application/json", "-d", body]


def partition_and_heal(url):
    """node-b's link goes down while 4 streams decode there (clients on node-a); it comes back."""
    streams = [subprocess.Popen(on("node-a", completion(url, [1, 2, 3 + k], 1000, True)),
                                stdout=subprocess.PIPE, text=True) for k in range(4)]
    for s in streams:
        u.check(s.stdout.readline().startswith("data: {"), "a stream did not start")
    sh("ip", "-n", NODES["node-b"][0], "link", "set", LINK["node-b"], "down")
    cut = time.time()
    ended = []
    for s in streams:
        out = s.stdout.read()
        s.wait(timeout=60)
        ended.append(time.time() - cut)
        u.check('"code":503' in out and "was lost" in out and out.count("data: {") < 900,
                f"a stream cut off from its decode replica: {out[-800:]}")
    u.check(max(ended) < 30, f"streams ended {ended} s after the cut")
    sh("ip", "-n", NODES["node-b"][0], "link", "set", LINK["node-b"], "up")
    healed = time.time()
    while True:
        r = subprocess.run(on("node-a", completion(url, [1, 2, 3], 5, False)), capture_output=True,
                           text=True)
        if '"choices"' in r.stdout:
            break
        u.check(time.time() - healed < 60, f"not serving 60 s after the link came back: {r.stdout}")
        time.sleep(1)
    print(f"4. node-b cut off: its 4 streams ended with a 503 naming the lost replica within "
          f"{max(ended):.1f} s; served again {time.time() - healed:.1f} s after the link came "
          f"back", flush=True)


def cluster_across_nodes(work, agent):
    topology = os.path.join(work, "two-node.yaml")
    with open(topology, "w") as f:
        f.write(f"""model: demo
kv_transport: {TRANSPORT}
coordinator:
  host: "{addr("node-a")}"
  bind_host: "{"::" if FAMILY == "ipv6" else addr("node-a")}"
  http_port: 0
  grpc_port: 0
  internal_port: 0
engine:
  block_size: 16
  max_num_seqs: 32
  kv_cache_gib: 0.125
  threads: 1
pools:
  - name: prefill
    role: prefill
    replicas: 1
    tensor_parallel_size: 2
    hosts: [node-a]
  - name: decode
    role: decode
    replicas: 1
    tensor_parallel_size: 2
    replica_hosts: [node-b]      # the per-replica form (prefill's is rank by rank)
""")
    run = os.path.join(work, "run")
    open(os.path.join(work, "agent.log"), "w").close()
    launch = u.start_launch(
        on("node-a", [TESSERA, "launch", topology, "--mpirun", "--work-dir", run,
                      "--mpirun-args", f"--mca plm_rsh_agent {agent} --mca btl self,vader,tcp"]))
    try:
        coordinator = addr("node-a")
        ports = json.load(open(os.path.join(run, "coordinator-ports.json")))
        u.check(any(f"curl http://{host_port(coordinator, ports['http'])}/" in l
                    for l in u.SERVE_LOG),
                "the ready message does not give the coordinator's routable address")
        for replica, node in (("prefill-0", "node-a"), ("decode-0", "node-b")):
            u.check(any(f"replica {replica} serving on {host_port(addr(node), '')}" in l
                        for l in u.SERVE_LOG), f"{replica} does not advertise {node}'s address")
        model = os.path.join(run, "demo-model")
        prompts = [[1 + (7 * i + j) % 400 for j in range(5 + 4 * i)] for i in range(8)]
        reference_file = os.path.join(work, "reference.json")
        json.dump([prompts, u.generate_reference(TESSERA, model, prompts, 10)],
                  open(reference_file, "w"))
        client = subprocess.run(
            ["ip", "netns", "exec", NODES["node-b"][0], sys.executable, os.path.abspath(__file__),
             TESSERA, TRANSPORT, "--client", host_port(coordinator, ports['grpc']),
             f"http://{host_port(coordinator, ports['http'])}/metrics", model, reference_file],
            capture_output=True, text=True, timeout=300)
        print(client.stdout, end="", flush=True)
        u.check(client.returncode == 0, f"the clients on node-b failed:\n{client.stderr}")
        bench_from_node_b(work, coordinator, ports)

        # A worker on node-b listening on loopback could never be dialled from node-a.
        r = subprocess.run(on("node-b", [
            TESSERA, "worker", "--model", model, "--served-model-name", u.MODEL,
            "--coordinator", host_port(coordinator, ports['internal']), "--listen", "127.0.0.1:0",
            "--replica-name", "stray", "--threads", "1", "--register-timeout", "20"]),
            capture_output=True, text=True, timeout=60)
        u.check(r.returncode == 1 and f"registered from {addr('node-b')} but gives the loopback "
                "address "
                "127.0.0.1:" in r.stderr and "--listen 0.0.0.0:PORT" in r.stderr,
                f"a worker on loopback: exit {r.returncode}, {r.stderr[-2000:]}")
        print("3. a worker on node-b listening on loopback is refused, and told what to pass",
              flush=True)
        partition_and_heal(f"http://{host_port(coordinator, ports['http'])}/v1/completions")
    finally:
        code = u.interrupt(launch, "tessera launch")
    u.check(code == 0, f"tessera launch exited with {code}")
    u.check_nothing_left(run)
    print("5. SIGINT stopped the cluster on both nodes", flush=True)


def main():
    if "--client" in sys.argv:
        i = sys.argv.index("--client")
        client_main(*sys.argv[i + 1:i + 5])
        return
    if os.geteuid() != 0:
        print("SKIP: network namespaces need root", flush=True)
        sys.exit(SKIP)
    for tool in ("ip", "unshare", "mpirun"):
        if shutil.which(tool) is None:
            print(f"SKIP: no {tool} on PATH", flush=True)
            sys.exit(SKIP)
    work = tempfile.mkdtemp(prefix=f"tessera-two-node-{TRANSPORT}-")
    try:
        make_nodes()
        agent = write_agent(work)
        model = os.path.join(work, "model")
        subprocess.run([TESSERA, "make-model", "--out", model, "--preset", "tiny", "--seed", "3",
                        "--init-std", "0.5"], check=True, capture_output=True)
        pipeline_across_nodes(work, agent, model)
        cluster_across_nodes(work, agent)
        if os.environ.get("TESSERA_TEST_GLOO") == "1":
            gloo_pipeline_across_nodes(work, model)
    finally:
        remove_nodes()
        shutil.rmtree(work, ignore_errors=True)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
