#!/usr/bin/env python3
"""The Kubernetes manifests (launch/k8s/) against the binary's own configuration checks.

For the base and every overlay (each folder with a kustomization.yaml):
1. Every YAML file under launch/k8s parses and is used (a kustomization, a resource, a patch, a
   generator's file or a kustomize configuration), and every file a kustomization names exists.
2. The effective objects are built the way kustomize would (below: resources, configMapGenerator
   with files, JSON 6902 patches, images) and checked: kinds and apiVersions; the coordinator
   Deployment and its Services (8000 http, 8001 grpc, the registry Service the topology names,
   published before readiness); one LeaderWorkerSet per pool (RecreateGroupOnPodRestart,
   LeaderCreated, spec.replicas = the pool's replicas, the worker's arguments, the topology
   mounted from the ConfigMap, POD_NAME/POD_IP from the downward API, the model where the pods
   mount it). Its group is one replica, in one of two shapes:
   - size 1: one pod (the ranks as threads), a workerTemplate only, probed on the replica port;
   - size = the pool's TP x PP: one rank per pod. A leaderTemplate (rank 0: the replica port as
     a container port, startup/liveness/readiness probes on it, the rendezvous port as a
     container port) and a workerTemplate (ranks 1..: no probes and no replica port, as a
     follower serves neither); both with the same arguments and env, `--comm-host $(POD_IP)`,
     the rendezvous at LWS_LEADER_ADDRESS (no --rendezvous-host, or $(LWS_LEADER_ADDRESS)), no
     --rank/--world-size or rank variables of their own.
   Any other size fails, and a self-test proves it: each pool's group given size TP x PP + 1
   must be refused. GPU limits per pod = TP x PP / size for cuda pools, none for cpu pools.
3. The binary checks what the containers would run: `tessera launch TOPOLOGY --check`; every
   rank's arguments with `--check` (the leader's template as LWS_WORKER_INDEX 0, the
   workerTemplate as each of 1..size-1; $(VAR)s expanded as the pod would: POD_NAME/POD_IP by
   placeholders, the LWS_* variables LeaderWorkerSet injects; --topology pointing at the
   ConfigMap's text in a temp file); for a multi-pod group, a follower told a group size other
   than TP x PP must be refused by the binary too; the coordinator's arguments with `--check` (its --topology
   pointed at the same temp file), whose printed addresses must be what the arguments and the
   topology say. A model an initContainer makes with `tessera
   make-model` is made here too (its --out moved to a temp dir, the topology and the arguments
   pointed at it), so the worker checks the model's split.
   Pools with backend cuda must be refused with the issue #8 message until that refusal goes;
   then they must pass.
4. Where `kustomize` or `kubectl` is on PATH, its build must equal ours (and the generated
   ConfigMap's hashed name must reach every pod that mounts it); otherwise a SKIP.

The kustomize subset this test implements (anything else in a kustomization is an error here, so
that the test is extended rather than silently wrong):
- resources: files (multi-document YAML) and folders with a kustomization.yaml;
- configMapGenerator: `files` (KEY=PATH or PATH), behavior create (default) or replace;
- patches: `path` or `patch` holding a list of JSON 6902 operations (add, copy, remove, replace,
  test) with a `target` (kind, optional name); strategic-merge patches are refused;
- images: name, newName, newTag (containers and initContainers anywhere);
- configurations: checked to exist (kustomize's own build checks what they do).

Usage: k8s_manifests_test.py TESSERA_BINARY [K8S_DIR]   (K8S_DIR: default launch/k8s)
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    print("FAIL  PyYAML is missing: pip install pyyaml, or apt install python3-yaml")
    sys.exit(1)

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESSERA = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else ""
K8S = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else os.path.join(SOURCE, "launch/k8s")

KINDS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
}
TOPOLOGY_CONFIGMAP = "tessera-topology"
TOPOLOGY_KEY = "topology.yaml"
COORDINATOR = "tessera-coordinator"  # the Deployment and the clients' Service
# What a worker of a cuda pool says in a build without CUDA, or, for several ranks, without NCCL
# (launch/engine_setup.cc ValidateBackend).
CUDA_REFUSAL = (r"error: worker: .*pool {pool}: backend cuda( with \d+ ranks per replica: .*"
                r"TESSERA_WITH_NCCL=OFF.*|: this tessera was built without the CUDA backend)")
MIN_STARTUP_S = 300  # a "long" startup probe: failureThreshold x periodSeconds
POD_IP = "10.0.0.1"  # what $(POD_IP) becomes for the checks
DEFAULT_RENDEZVOUS_PORT = 29500  # launch/replica_runner.h kDefaultRendezvousPort


class Failure(Exception):
    pass


class Results:
    def __init__(self):
        self.counts = {"PASS": 0, "FAIL": 0, "SKIP": 0, "XFAIL": 0}

    def line(self, kind, name, detail=""):
        self.counts[kind] += 1
        print(f"{kind:5} {name}" + (f": {detail}" if detail else ""), flush=True)

    def check(self, name, fn):
        """Runs fn(); a Failure (or any exception) is a FAIL line, a string returned a detail."""
        try:
            detail = fn()
        except Failure as e:
            self.line("FAIL", name, str(e))
            return
        except Exception as e:  # a bug in the manifests' shape shows up as a KeyError etc.
            self.line("FAIL", name, f"{type(e).__name__}: {e}")
            return
        if isinstance(detail, tuple):
            self.line(detail[0], name, detail[1])
        else:
            self.line("PASS", name, detail or "")


def expect(cond, message):
    if not cond:
        raise Failure(message)


def rel(path):
    return os.path.relpath(path, K8S)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- A kustomize subset ----------------------------------------------------------------------


def pointer(path):
    expect(path.startswith("/"), f"JSON pointer '{path}' must start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def walk(doc, tokens, path):
    for t in tokens:
        if isinstance(doc, list):
            expect(t.isdigit() and int(t) < len(doc), f"{path}: no element {t}")
            doc = doc[int(t)]
        else:
            expect(isinstance(doc, dict) and t in doc, f"{path}: no key '{t}'")
            doc = doc[t]
    return doc


def apply_op(obj, op, where):
    kind = op.get("op")
    path = op.get("path", "")
    tokens = pointer(path)
    parent = walk(obj, tokens[:-1], path)
    last = tokens[-1]
    if kind == "test":
        expect(walk(parent, [last], path) == op.get("value"),
               f"{where}: test {path} == {op.get('value')!r} failed")
    elif kind in ("remove", "replace"):
        walk(parent, [last], path)  # must exist
        if kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
    elif kind in ("add", "copy"):
        if kind == "add":
            value = copy.deepcopy(op["value"])
        else:  # copy: the value at `from`, added at `path` (RFC 6902 section 4.5)
            value = copy.deepcopy(walk(obj, pointer(op.get("from", "")), op.get("from", "")))
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            expect(0 <= index <= len(parent), f"{path}: index {last} out of range")
            parent.insert(index, value)
        else:
            parent[last] = value
    else:
        raise Failure(f"{where}: JSON 6902 op '{kind}' is not implemented by this test")


def matches(obj, target):
    for key in target:
        expect(key in ("kind", "name", "group", "version"),
               f"patch target key '{key}' is not implemented by this test")
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return (obj.get("kind") == target.get("kind", obj.get("kind"))
            and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"])
            and group == target.get("group", group))


def pod_specs(obj):
    """(label, pod spec) of every pod template of a workload."""
    if obj["kind"] == "Deployment":
        return [("template", obj["spec"]["template"]["spec"])]
    if obj["kind"] == "LeaderWorkerSet":
        lwt = obj["spec"]["leaderWorkerTemplate"]
        specs = [("workerTemplate", lwt["workerTemplate"]["spec"])]
        if lwt.get("leaderTemplate"):
            specs.append(("leaderTemplate", lwt["leaderTemplate"]["spec"]))
        return specs
    return []


def set_images(obj, images):
    def visit(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for c in value:
                        name, _, tag = c.get("image", "").partition(":")
                        for image in images:
                            if image["name"] == name:
                                c["image"] = (f"{image.get('newName', name)}:"
                                              f"{image.get('newTag', tag or 'latest')}")
                visit(value)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(obj)


class Build:
    """A kustomization's effective objects and the files it used."""

    def __init__(self, folder):
        self.folder = folder
        self.used = set()  # files read (absolute paths)
        self.objects = []  # resources, patched, images set
        self.generated = {}  # ConfigMap name -> object
        self.generator_files = {}  # ConfigMap name -> {key: file}
        self._build()

    def _file(self, name):
        path = os.path.normpath(os.path.join(self.folder, name))
        expect(os.path.exists(path), f"{rel(self.folder)}/kustomization.yaml names {name}, "
               "which does not exist")
        return path

    def _build(self):
        kfile = os.path.join(self.folder, "kustomization.yaml")
        self.used.add(kfile)
        (k,) = load_docs(kfile)
        expect(k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1"
               and k.get("kind") == "Kustomization",
               f"{rel(kfile)}: apiVersion/kind must be kustomize.config.k8s.io/v1beta1 "
               "Kustomization")
        known = {"apiVersion", "kind", "resources", "configMapGenerator", "patches", "images",
                 "configurations"}
        unknown = set(k) - known
        expect(not unknown, f"{rel(kfile)}: {sorted(unknown)} not implemented by this test")
        for r in k.get("resources", []):
            path = self._file(r)
            if os.path.isdir(path):
                base = Build(path)
                self.used |= base.used
                self.objects += base.objects
                self.generated.update(base.generated)
                self.generator_files.update(base.generator_files)
            else:
                self.used.add(path)
                self.objects += load_docs(path)
        for gen in k.get("configMapGenerator", []):
            unknown = set(gen) - {"name", "behavior", "files"}
            expect(not unknown, f"{rel(kfile)}: configMapGenerator {sorted(unknown)} not "
                   "implemented by this test")
            data, files = {}, {}
            for entry in gen.get("files", []):
                key, _, name = entry.rpartition("=")
                path = self._file(name)
                self.used.add(path)
                key = key or os.path.basename(name)
                files[key] = path
                with open(path) as f:
                    data[key] = f.read()
            behavior = gen.get("behavior", "create")
            exists = gen["name"] in self.generated
            expect(behavior in ("create", "replace"), f"{rel(kfile)}: configMapGenerator "
                   f"behavior {behavior} not implemented by this test")
            expect(exists == (behavior == "replace"),
                   f"{rel(kfile)}: configMapGenerator {gen['name']}: behavior {behavior} but it "
                   f"{'already exists' if exists else 'is not in the base'}")
            self.generated[gen["name"]] = {"apiVersion": "v1", "kind": "ConfigMap",
                                           "metadata": {"name": gen["name"]}, "data": data}
            self.generator_files[gen["name"]] = files
        for name in k.get("configurations", []):
            self.used.add(self._file(name))
        for i, patch in enumerate(k.get("patches", [])):
            unknown = set(patch) - {"path", "patch", "target"}
            expect(not unknown, f"{rel(kfile)}: patches[{i}] {sorted(unknown)} not implemented")
            if "path" in patch:
                path = self._file(patch["path"])
                self.used.add(path)
                (ops,) = load_docs(path)
                where = rel(path)
            else:
                ops = yaml.safe_load(patch["patch"])
                where = f"{rel(kfile)} patches[{i}]"
            expect(isinstance(ops, list) and "target" in patch,
                   f"{where}: only JSON 6902 patches (a list of operations, with a target) are "
                   "implemented by this test")
            hits = [o for o in self.objects if matches(o, patch["target"])]
            expect(hits, f"{where}: target {patch['target']} matches no object")
            for obj in hits:
                for op in ops:
                    apply_op(obj, op, where)
        for obj in self.objects:
            set_images(obj, k.get("images", []))
        # Generated ConfigMaps go first, as kustomize emits them.
        self.objects = [o for o in self.objects if o.get("kind") != "ConfigMap"]
        self.objects = list(self.generated.values()) + self.objects

    def get(self, kind, name=None):
        found = [o for o in self.objects
                 if o.get("kind") == kind and name in (None, o["metadata"]["name"])]
        return found


# --- Structural checks -----------------------------------------------------------------------


def tessera_containers(spec, subcommand):
    return [c for c in spec.get("containers", []) + spec.get("initContainers", [])
            if os.path.basename((c.get("command") or [""])[0]) == "tessera"
            and (c.get("args") or [""])[0] == subcommand]


def flag(args, name):
    """The value of --name in args (None when absent; a list when repeated is not supported)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    values += [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    expect(len(values) <= 1, f"{name} is given {len(values)} times")
    return values[0] if values else None


def probe_window(probe):
    return probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)


def port_of(container, port):
    """A probe's or Service's port (a number or a container port name) as a number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise Failure(f"container {container['name']} has no port named {port}")


def volume_for(spec, container, path):
    """The (mount, volume) of `container` that holds `path`, the longest mount path first."""
    mounts = sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    for m in mounts:
        root = m["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            (volume,) = [v for v in spec.get("volumes", []) if v["name"] == m["name"]]
            return m, volume
    raise Failure(f"container {container['name']}: {path} is on no volume it mounts")


def gpus(container, where):
    res = container.get("resources", {})
    limit = res.get("limits", {}).get("nvidia.com/gpu")
    request = res.get("requests", {}).get("nvidia.com/gpu")
    expect(request is None or request == limit,
           f"{where}: nvidia.com/gpu request {request} differs from its limit {limit}")
    return limit


def check_model_volume(spec, container, model, where):
    """The model directory is on a volume: the tessera-models PVC, or an emptyDir that an
    initContainer fills with `tessera make-model --out MODEL`."""
    mount, volume = volume_for(spec, container, model)
    if "persistentVolumeClaim" in volume:
        expect(volume["persistentVolumeClaim"]["claimName"] == "tessera-models",
               f"{where}: the model volume claims "
               f"{volume['persistentVolumeClaim']['claimName']}, not tessera-models")
        expect(mount.get("readOnly"), f"{where}: the model volume must be mounted read-only")
        return
    expect("emptyDir" in volume, f"{where}: the model volume is neither the tessera-models PVC "
           "nor an emptyDir an initContainer fills")
    for init in tessera_containers({"containers": spec.get("initContainers", [])}, "make-model"):
        out = flag(init["args"], "--out")
        if out == model:
            init_mount, _ = volume_for(spec, init, out)
            expect(init_mount["name"] == mount["name"],
                   f"{where}: make-model writes {out} to volume {init_mount['name']}, the "
                   f"container reads volume {mount['name']}")
            return
    raise Failure(f"{where}: no initContainer runs `tessera make-model --out {model}`")


def check_topology_mount(spec, container, path, where):
    """`path` (a --topology argument) is the topology ConfigMap's key, mounted in the pod."""
    expect(path, f"{where}: no --topology")
    mount, volume = volume_for(spec, container, path)
    key = os.path.relpath(path, mount["mountPath"])
    cm = volume.get("configMap", {})
    items = {i["path"]: i["key"] for i in cm.get("items", [])} or {TOPOLOGY_KEY: TOPOLOGY_KEY}
    expect(cm.get("name") == TOPOLOGY_CONFIGMAP and items.get(key) == TOPOLOGY_KEY,
           f"{where}: --topology {path} is not ConfigMap {TOPOLOGY_CONFIGMAP}'s {TOPOLOGY_KEY}")


def coordinator_settings(args, topology):
    """What `tessera coordinator ARGS` runs with: each flag as given; with --topology, the rest
    from the topology's model and coordinator section as the binary fills them in; else None."""
    co = topology.get("coordinator", {})
    host = co.get("host", "127.0.0.1")
    loopback = host in ("127.0.0.1", "localhost", "::1", "[::1]")
    from_topology = {
        "--model": topology["model"],
        "--served-model-name": topology.get("served_model_name") or topology["model"],
        "--host": co.get("bind_host") or host,
        "--port": str(co.get("http_port", 8000)),
        "--grpc-port": str(co.get("grpc_port", 8001)),
        "--internal-address":
            f"{'127.0.0.1' if loopback else '0.0.0.0'}:{co.get('internal_port', 8002)}",
        "--max-queued-requests": str(co.get("max_queued_requests", 256)),
        "--lease-timeout": str(co.get("lease_timeout_s", 3)),
        "--drain-timeout": str(co.get("drain_timeout_s", 30)),
    }
    reads = flag(args, "--topology") is not None
    return {name: flag(args, name) if flag(args, name) is not None else
            (value if reads else None) for name, value in from_topology.items()}


def check_objects(build):
    for obj in build.objects:
        kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
        expect(kind in KINDS, f"{kind} {name}: unexpected kind (expected {sorted(KINDS)})")
        expect(obj.get("apiVersion") == KINDS[kind],
               f"{kind} {name}: apiVersion {obj.get('apiVersion')}, expected {KINDS[kind]}")
        expect(name, f"a {kind} without metadata.name")
        expect(len(build.get(kind, name)) == 1, f"{kind} {name} is defined twice")
    return f"{len(build.objects)} objects"


def topology_of(build):
    cms = build.get("ConfigMap", TOPOLOGY_CONFIGMAP)
    expect(cms and TOPOLOGY_KEY in cms[0]["data"],
           f"no ConfigMap {TOPOLOGY_CONFIGMAP} with key {TOPOLOGY_KEY}")
    return yaml.safe_load(cms[0]["data"][TOPOLOGY_KEY])


def check_coordinator(build, topology):
    (dep,) = build.get("Deployment", COORDINATOR) or [None]
    expect(dep is not None, f"no Deployment {COORDINATOR}")
    expect(dep["spec"].get("replicas", 1) == 1, "the coordinator must have 1 replica")
    expect(dep["spec"].get("strategy", {}).get("type") == "Recreate",
           "the coordinator Deployment needs strategy Recreate (workers register with one)")
    spec = dep["spec"]["template"]["spec"]
    (c,) = tessera_containers(spec, "coordinator") or [None]
    expect(c is not None, "the Deployment runs no `tessera coordinator` container")
    args = c["args"]
    if flag(args, "--topology") is not None:
        check_topology_mount(spec, c, flag(args, "--topology"), "coordinator")
    eff = coordinator_settings(args, topology)
    co = topology.get("coordinator", {})
    served = topology.get("served_model_name") or topology["model"]
    want = {"--model": topology["model"], "--served-model-name": served,
            "--port": str(co.get("http_port", 8000)), "--grpc-port": str(co.get("grpc_port", 8001))}
    for name, value in want.items():
        expect(eff[name] == value,
               f"coordinator {name} {eff[name]} but the topology says {value}")
    internal = co.get("internal_port", 8002)
    expect((eff["--internal-address"] or "").endswith(f":{internal}"),
           f"coordinator --internal-address {eff['--internal-address']} is not on the "
           f"topology's internal_port {internal}")
    expect(eff["--host"] == "0.0.0.0" and (eff["--internal-address"] or "").startswith("0.0.0.0:"),
           "the coordinator must bind 0.0.0.0 (--host, --internal-address) to be reachable")
    for name, key, default in (("--max-queued-requests", "max_queued_requests", 256),
                               ("--lease-timeout", "lease_timeout_s", 3),
                               ("--drain-timeout", "drain_timeout_s", 30)):
        value = float(eff[name] or default)
        expect(value == float(co.get(key, default)),
               f"coordinator {name} {value} but the topology's coordinator.{key} is "
               f"{co.get(key, default)}")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    expect(ports.get("http") == int(want["--port"])
           and ports.get("grpc") == int(want["--grpc-port"]) and ports.get("internal") == internal,
           f"container ports {ports} do not match http/grpc/internal of the arguments")
    # Probes: readiness = GET /health (200 once a replica registered); liveness = gRPC health of
    # the registry port, which stays SERVING while the process serves (8001's turns NOT_SERVING
    # with no replica, so a liveness probe there would restart a healthy coordinator).
    ready = c.get("readinessProbe", {}).get("httpGet", {})
    expect(ready.get("path") == "/health" and port_of(c, ready.get("port")) == ports["http"],
           "the coordinator's readinessProbe must be GET /health on the HTTP port")
    live = c.get("livenessProbe", {}).get("grpc", {})
    expect(live.get("port") == internal and not live.get("service"),
           f"the coordinator's livenessProbe must be gRPC health (service \"\") on {internal}")
    startup = c.get("startupProbe")
    expect(startup and probe_window(startup) >= MIN_STARTUP_S,
           f"the coordinator needs a startupProbe of at least {MIN_STARTUP_S} s")
    check_model_volume(spec, c, topology["model"], "coordinator")
    labels = dep["spec"]["template"]["metadata"]["labels"]

    def service(name, wanted):
        (svc,) = build.get("Service", name) or [None]
        expect(svc is not None, f"no Service {name}")
        sel = svc["spec"].get("selector", {})
        expect(sel and all(labels.get(k) == v for k, v in sel.items()),
               f"Service {name} does not select the coordinator's pods")
        got = {p.get("name"): p for p in svc["spec"]["ports"]}
        for pname, port in wanted.items():
            p = got.get(pname)
            expect(p and p["port"] == port and
                   port_of(c, p.get("targetPort", p["port"])) == port,
                   f"Service {name} needs port {pname} {port} to container port {port}")
        return svc

    service(COORDINATOR, {"http": int(want["--port"]), "grpc": int(want["--grpc-port"])})
    svc = service(co.get("host", ""), {"internal": internal})
    expect(svc["spec"].get("publishNotReadyAddresses") is True,
           f"Service {co.get('host')} (the workers' registry) needs publishNotReadyAddresses: the "
           "coordinator is ready only after a worker registered through it")
    return f"args agree with the topology; Services {COORDINATOR}, {co.get('host')}"


def pool_ranks(pool):
    return pool.get("tensor_parallel_size", 1) * pool.get("pipeline_parallel_size", 1)


def group_templates(lws):
    """[(label, pod spec, LWS_WORKER_INDEX values)] of a LeaderWorkerSet group: rank 0 runs the
    leaderTemplate (the workerTemplate when there is none), ranks 1..size-1 the workerTemplate."""
    lwt = lws["spec"]["leaderWorkerTemplate"]
    size = lwt.get("size", 1)
    leader = lwt.get("leaderTemplate")
    out = [("leaderTemplate" if leader else "workerTemplate",
            (leader or lwt["workerTemplate"])["spec"], [0])]
    if size > 1:
        out.append(("workerTemplate", lwt["workerTemplate"]["spec"], list(range(1, size))))
    return out


def rendezvous_port(args):
    """The port rank 0's rendezvous store listens on and the others dial (0 or absent: 29500,
    as no MASTER_PORT is set in the pods; check_gloo_rank refuses one)."""
    return int(flag(args, "--rendezvous-port") or 0) or DEFAULT_RENDEZVOUS_PORT


def check_gloo_rank(c, where, leader):
    """A rank of a multi-pod replica: Gloo over the pod IP, rank 0's store at LWS_LEADER_ADDRESS."""
    args = c["args"]
    expect(flag(args, "--comm") in (None, "auto", "gloo"),
           f"{where}: --comm {flag(args, '--comm')}: the ranks of a multi-pod replica use gloo")
    expect(flag(args, "--comm-host") == "$(POD_IP)",
           f"{where}: --comm-host must be $(POD_IP) (the default, the pod's hostname, does not "
           "resolve in the other pods of the group)")
    expect(flag(args, "--rendezvous-host") in (None, "$(LWS_LEADER_ADDRESS)"),
           f"{where}: --rendezvous-host {flag(args, '--rendezvous-host')}: rank 0's store is at "
           "LWS_LEADER_ADDRESS (leave the flag out, or give $(LWS_LEADER_ADDRESS))")
    for f in ("--rank", "--world-size"):
        expect(flag(args, f) is None, f"{where}: {f}: LeaderWorkerSet gives each pod its rank")
    names = {e["name"] for e in c.get("env", [])}
    stray = sorted(names & {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LWS_WORKER_INDEX",
                            "LWS_GROUP_SIZE", "LWS_LEADER_ADDRESS"})
    expect(not stray, f"{where}: env {stray} would override the rank LeaderWorkerSet gives")
    port = rendezvous_port(args)
    if leader:
        expect(port in [p["containerPort"] for p in c.get("ports", [])],
               f"{where}: rank 0 hosts the rendezvous store on {port}: make it a container port")
    return port


def check_worker_pod(build, lws, label, spec, pool, topology, role):
    """One template of a pool's LeaderWorkerSet. role: "leader" (rank 0, alone or with
    followers: serves the replica port, probed there) or "follower" (ranks 1.., serve nothing)."""
    where = f"{lws['metadata']['name']} {label}"
    (c,) = tessera_containers(spec, "worker") or [None]
    expect(c is not None, f"{where}: no `tessera worker` container")
    args = c["args"]
    expect(flag(args, "--pool") == pool["name"] and flag(args, "--replica") == "0",
           f"{where}: --pool/--replica are {flag(args, '--pool')}/{flag(args, '--replica')}")
    check_topology_mount(spec, c, flag(args, "--topology"), where)
    env = {e["name"]: e for e in c.get("env", [])}
    for var, field in (("POD_NAME", "metadata.name"), ("POD_IP", "status.podIP")):
        expect(env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field,
               f"{where}: env {var} must come from the downward API ({field})")
    expect(flag(args, "--replica-name") == "$(POD_NAME)", f"{where}: --replica-name $(POD_NAME)")
    expect(flag(args, "--advertise-host") == "$(POD_IP)", f"{where}: --advertise-host $(POD_IP)")
    listen = flag(args, "--listen") or ""
    # Every rank's KV transport binds the --listen host; only rank 0 serves the port.
    expect(listen.startswith("0.0.0.0:"), f"{where}: --listen must be 0.0.0.0:PORT")
    port = int(listen.rpartition(":")[2])
    probes = ("startupProbe", "livenessProbe", "readinessProbe")
    if role == "leader":
        expect(port in [p["containerPort"] for p in c.get("ports", [])],
               f"{where}: --listen port {port} is not a container port")
        for kind in probes:
            probe = c.get(kind)
            expect(probe, f"{where}: no {kind}")
            target = probe.get("grpc") or probe.get("tcpSocket") or {}
            expect(port_of(c, target.get("port")) == port,
                   f"{where}: {kind} must probe the replica port {port} (gRPC health or TCP)")
        expect(probe_window(c["startupProbe"]) >= MIN_STARTUP_S,
               f"{where}: the startupProbe must allow at least {MIN_STARTUP_S} s to load a model")
    else:
        # A follower runs no replica service and no health service, and its KV transport and
        # Gloo take free ports: there is nothing to probe. It exits when it fails or loses rank 0,
        # and RecreateGroupOnPodRestart restarts the group; rank 0's probes cover the replica.
        present = [k for k in probes if c.get(k)]
        expect(not present, f"{where}: {present} on a follower rank, which serves no port (the "
               f"replica port {port} is rank 0's): leave followers unprobed")
        expect(port not in [p["containerPort"] for p in c.get("ports", [])],
               f"{where}: container port {port}: a follower does not serve the replica port")
    ranks = pool_ranks(pool)
    size = lws["spec"]["leaderWorkerTemplate"].get("size", 1)
    per_pod = ranks // size
    backend = pool.get("backend", "cpu")
    limit = gpus(c, where)
    if backend == "cuda":
        expect(limit == per_pod, f"{where}: backend cuda with {per_pod} rank(s) per pod needs "
               f"nvidia.com/gpu {per_pod}, has {limit}")
    else:
        expect(limit is None, f"{where}: backend {backend} but nvidia.com/gpu {limit}")
    for other in spec.get("containers", []) + spec.get("initContainers", []):
        if other is not c:
            expect(gpus(other, where) is None, f"{where}: {other['name']} asks for GPUs")
    check_model_volume(spec, c, topology["model"], where)
    if size > 1:
        check_gloo_rank(c, where, leader=(role == "leader"))
    return f"{label} {role}: {per_pod} rank(s), nvidia.com/gpu {limit}"


def check_group(build, lws, pool, topology):
    """A pool's LeaderWorkerSet: its group is one replica, as one pod (size 1: the ranks are
    threads) or as TP x PP pods (one rank per pod, over Gloo)."""
    name = lws["metadata"]["name"]
    lwt = lws["spec"]["leaderWorkerTemplate"]
    expect(lws["spec"].get("replicas", 1) == pool.get("replicas", 1),
           f"{name}: spec.replicas {lws['spec'].get('replicas', 1)} but pool "
           f"{pool['name']} has {pool.get('replicas', 1)} replicas")
    ranks = pool_ranks(pool)
    size = lwt.get("size", 1)
    expect(isinstance(size, int) and size in (1, ranks),
           f"{name}: size {size}, but a replica of pool {pool['name']} has {ranks} rank(s) "
           f"(tensor_parallel_size {pool.get('tensor_parallel_size', 1)} x pipeline_parallel_size "
           f"{pool.get('pipeline_parallel_size', 1)}): size must be "
           + (f"{ranks} (one rank per pod) or 1 (the ranks as threads of one pod)" if ranks > 1
              else "1"))
    expect(lwt.get("restartPolicy") == "RecreateGroupOnPodRestart",
           f"{name}: restartPolicy must be RecreateGroupOnPodRestart")
    expect(lws["spec"].get("startupPolicy", "LeaderCreated") == "LeaderCreated",
           f"{name}: startupPolicy must be LeaderCreated")
    if size == 1:
        expect(not lwt.get("leaderTemplate"),
               f"{name}: size 1 with a leaderTemplate: the workerTemplate would run nowhere; give "
               "the one pod's template as workerTemplate")
        ((label, spec, _),) = group_templates(lws)
        return f"1 pod; {check_worker_pod(build, lws, label, spec, pool, topology, 'leader')}"
    expect(lwt.get("leaderTemplate"),
           f"{name}: size {size} needs a leaderTemplate: followers serve no gRPC port, so rank 0 "
           "(probed on the replica port) and ranks 1.. (unprobed) need templates of their own")
    (_, leader_spec, _), (_, follower_spec, _) = group_templates(lws)
    (lc,) = tessera_containers(leader_spec, "worker") or [None]
    (fc,) = tessera_containers(follower_spec, "worker") or [None]
    expect(lc is not None and fc is not None, f"{name}: a template has no `tessera worker`")
    # Every rank runs the same command and environment; the rank (LWS_WORKER_INDEX) decides.
    expect(lc["args"] == fc["args"],
           f"{name}: leader and worker arguments differ: {lc['args']} vs {fc['args']}")
    expect(lc.get("env") == fc.get("env"), f"{name}: leader and worker env differ")
    out = [check_worker_pod(build, lws, "leaderTemplate", leader_spec, pool, topology, "leader"),
           check_worker_pod(build, lws, "workerTemplate", follower_spec, pool, topology,
                            "follower")]
    return (f"{size} pods, rendezvous on rank 0's port {rendezvous_port(lc['args'])}; "
            + "; ".join(out))


def lws_by_pool(build, topology):
    by_pool = {}
    for lws in build.get("LeaderWorkerSet"):
        lwt = lws["spec"]["leaderWorkerTemplate"]
        (c,) = tessera_containers(lwt["workerTemplate"]["spec"], "worker") or [None]
        expect(c is not None, f"{lws['metadata']['name']}: no `tessera worker` container")
        by_pool.setdefault(flag(c["args"], "--pool"), []).append(lws)
    names = [p.get("name") or p["role"] for p in topology["pools"]]
    expect(sorted(by_pool) == sorted(names) and all(len(v) == 1 for v in by_pool.values()),
           f"LeaderWorkerSets per --pool {dict((k, len(v)) for k, v in by_pool.items())}, "
           f"topology pools {names}: want one each")
    return {pool["name"]: by_pool[pool.get("name") or pool["role"]][0]
            for pool in topology["pools"]}


def check_pools(build, topology):
    lwss = lws_by_pool(build, topology)
    out = []
    for pool in topology["pools"]:
        backend = pool.get("backend", "cpu")
        out.append(f"{pool['name']} ({backend}, {pool_ranks(pool)} rank(s)): "
                   f"{check_group(build, lwss[pool['name']], pool, topology)}")
    return " | ".join(out)


def check_size_mismatch_fails(build, topology):
    """The checks above must refuse a group whose size disagrees with the pool's TP x PP: every
    pool's LeaderWorkerSet given size TP x PP + 1 (so neither 1 nor TP x PP) must fail them."""
    lwss = lws_by_pool(build, topology)
    refused = []
    for pool in topology["pools"]:
        bad = copy.copy(build)
        bad.objects = copy.deepcopy(build.objects)
        (lws,) = bad.get("LeaderWorkerSet", lwss[pool["name"]]["metadata"]["name"])
        wrong = pool_ranks(pool) + 1
        lws["spec"]["leaderWorkerTemplate"]["size"] = wrong
        try:
            check_group(bad, lws, pool, topology)
        except Failure as e:
            expect(f"size {wrong}" in str(e), f"pool {pool['name']}, size {wrong}: refused for "
                   f"another reason: {e}")
            refused.append(f"{pool['name']} size {wrong}")
            continue
        raise Failure(f"pool {pool['name']} with TP x PP {pool_ranks(pool)}: its LeaderWorkerSet "
                      f"with size {wrong} passed the checks")
    return f"refused: {', '.join(refused)}"


# --- The binary's checks ---------------------------------------------------------------------


def run(argv, env=None):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=30, env=env)
    return p.returncode, p.stdout.strip()


def expand(args, env):
    """Kubernetes' $(VAR) expansion in args ($$ escapes a $; undefined variables stay)."""
    return [re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                   lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), a)
            for a in args]


def lws_env(lws, index, size=None):
    """(pod name, the variables LeaderWorkerSet prepends to every container's env) of rank
    `index` of group 0 in namespace default."""
    name = lws["metadata"]["name"]
    size = lws["spec"]["leaderWorkerTemplate"].get("size", 1) if size is None else size
    pod = f"{name}-0" if index == 0 else f"{name}-0-{index}"
    return pod, {"LWS_LEADER_ADDRESS": f"{name}-0.{name}.default", "LWS_GROUP_SIZE": str(size),
                 "LWS_WORKER_INDEX": str(index)}


def container_env(container, pod_name, injected=None):
    """The container's env as $(VAR) expansion sees it: `injected` (what LWS prepends), then its
    own entries, downward-API fields filled in."""
    env = dict(injected or {})
    for e in container.get("env", []):
        field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[e["name"]] = {"metadata.name": pod_name, "status.podIP": POD_IP,
                          "metadata.namespace": "default"}.get(field, e.get("value", ""))
    return env


def process_env(extra):
    """This environment without other launchers' rank variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not re.match(r"^(OMPI_|PMIX_|PMI_|SLURM_|LWS_)|^(RANK|WORLD_SIZE|LOCAL_RANK|"
                           r"MASTER_ADDR|MASTER_PORT)$", k)}
    env.update(extra)
    return env


class BinaryChecks:
    def __init__(self, build, work, results, label):
        self.build, self.work, self.results, self.label = build, work, results, label
        self.models = {}  # a model path in the pods -> where make-model wrote it here
        cm = build.get("ConfigMap", TOPOLOGY_CONFIGMAP)[0]
        self.topology_text = cm["data"][TOPOLOGY_KEY]
        self.topology = yaml.safe_load(self.topology_text)
        self.deployed = os.path.join(work, "topology.yaml")  # the ConfigMap's text as is
        with open(self.deployed, "w") as f:
            f.write(self.topology_text)
        self.local = self.deployed  # what workers read; make_models points it at models made here

    def make_models(self):
        made = []
        for obj in self.build.objects:
            for _, spec in pod_specs(obj):
                for init in tessera_containers({"containers": spec.get("initContainers", [])},
                                               "make-model"):
                    out = flag(init["args"], "--out")
                    here = os.path.join(self.work, "models", out.strip("/").replace("/", "_"))
                    if out in self.models:
                        continue
                    args = expand(init["args"], container_env(init, "pod-0"))
                    args[args.index(out)] = here
                    rc, text = run([TESSERA] + args)
                    expect(rc == 0, f"`tessera {' '.join(init['args'])}` failed ({rc}): {text}")
                    self.models[out] = here
                    made.append(out)
        # The workers read a copy of the topology whose model is the one made here.
        local = dict(self.topology)
        local["model"] = self.models.get(local["model"], local["model"])
        self.local = os.path.join(self.work, "topology-local.yaml")
        with open(self.local, "w") as f:
            yaml.safe_dump(local, f, sort_keys=False)
        if not made:
            return "none: the model comes from a volume (absent here, so its split is not checked)"
        return f"made {', '.join(made)}"

    def launch_check(self):
        rc, text = run([TESSERA, "launch", self.deployed, "--check"])
        expect(rc == 0, f"`tessera launch TOPOLOGY --check` exited {rc}: {text}")
        return text.splitlines()[-1].replace(self.deployed, "ConfigMap " + TOPOLOGY_CONFIGMAP)

    def worker_args(self, lws, spec, index, size=None):
        """(argv, env) of rank `index`'s `tessera worker ... --check` as its pod would run it."""
        (c,) = tessera_containers(spec, "worker")
        pod, injected = lws_env(lws, index, size)
        args = expand(c["args"], container_env(c, pod, injected))
        expect(flag(args, "--topology"), "the worker has no --topology")
        args[args.index(flag(args, "--topology"))] = self.local
        return [TESSERA] + args + ["--check"], process_env(injected)

    def worker_check(self, lws, spec, index):
        argv, env = self.worker_args(lws, spec, index)
        args = argv[1:-1]
        rc, text = run(argv, env)
        pool = next(p for p in self.topology["pools"]
                    if (p.get("name") or p["role"]) == flag(args, "--pool"))
        refusal = re.search(CUDA_REFUSAL.format(pool=re.escape(pool["name"])), text)
        if pool.get("backend", "cpu") == "cuda" and rc == 1 and refusal:
            return ("XFAIL", f"refused as expected by a build without it: {refusal.group(0)}")
        expect(rc == 0 and "tessera worker: configuration ok" in text,
               f"`tessera {' '.join(args)} --check` (LWS_WORKER_INDEX {index}) exited {rc}: {text}")
        if self.topology["model"] in self.models:
            expect("its split checked" in text, f"the model's split was not checked: {text}")
        return text.replace("tessera worker: ", "")

    def size_mismatch_check(self, lws, spec):
        """The binary agrees with check_group: told a group size other than the pool's TP x PP,
        a rank of a multi-pod group refuses to start."""
        argv, _ = self.worker_args(lws, spec, 0)
        pool = next(p for p in self.topology["pools"] if p["name"] == flag(argv, "--pool"))
        wrong = pool_ranks(pool) + 1
        argv, env = self.worker_args(lws, spec, 1, size=wrong)
        rc, text = run(argv, env)
        want = f"has {pool_ranks(pool)} ranks"
        expect(rc != 0 and want in text,
               f"rank 1 of a group of {wrong} for pool {pool['name']} (TP x PP "
               f"{pool_ranks(pool)}): want a refusal saying '{want}', got exit {rc}: {text}")
        return f"LWS_GROUP_SIZE {wrong}: {text.splitlines()[-1]}"

    def coordinator_check(self, c):
        args = [self.models.get(a, a) for a in c["args"]]
        if flag(args, "--topology") is not None:  # the local copy: its model is the one made here
            args[args.index(flag(args, "--topology"))] = self.local
        rc, text = run([TESSERA] + args + ["--check"])
        expect(rc == 0 and "configuration ok" in text,
               f"`tessera {' '.join(args)} --check` exited {rc}: {text}")
        eff = coordinator_settings(c["args"], self.topology)
        if eff["--model"] in self.models:
            expect("config and tokenizer load" in text,
                   f"the coordinator did not load the model it was given: {text}")
        # What the binary made of its arguments (and the topology) is what the manifest means.
        for what, want in (("HTTP", f"{eff['--host']}:{eff['--port']}"),
                           ("gRPC", f"{eff['--host']}:{eff['--grpc-port']}"),
                           ("replicas register at", eff["--internal-address"])):
            expect(f"{what} {want}" in text,
                   f"the coordinator would serve {what} elsewhere than {want}: {text}")
        return text.replace("tessera coordinator: ", "")

    def run_all(self):
        r, label = self.results, self.label
        r.check(f"{label}: initContainer make-model", self.make_models)
        r.check(f"{label}: tessera launch --check", self.launch_check)
        for dep in self.build.get("Deployment"):
            for c in tessera_containers(dep["spec"]["template"]["spec"], "coordinator"):
                r.check(f"{label}: Deployment {dep['metadata']['name']} coordinator --check",
                        lambda c=c: self.coordinator_check(c))
        for lws in self.build.get("LeaderWorkerSet"):
            name = lws["metadata"]["name"]
            for tmpl, spec, indices in group_templates(lws):
                for i in indices:
                    r.check(f"{label}: LeaderWorkerSet {name} {tmpl} (LWS_WORKER_INDEX {i}) "
                            "worker --check",
                            lambda lws=lws, spec=spec, i=i: self.worker_check(lws, spec, i))
            if lws["spec"]["leaderWorkerTemplate"].get("size", 1) > 1:
                (_, spec, _) = group_templates(lws)[-1]
                r.check(f"{label}: LeaderWorkerSet {name} worker --check refuses a group size "
                        "other than TP x PP",
                        lambda lws=lws, spec=spec: self.size_mismatch_check(lws, spec))


# --- kustomize's own build -------------------------------------------------------------------


def kustomize_command():
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        try:
            if run(["kubectl", "kustomize", "--help"])[0] == 0:
                return ["kubectl", "kustomize"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}/{k}: only in {'ours' if k in a else 'kustomize'}"
            d = diff(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = diff(x, y, f"{path}/{i}")
            if d:
                return d
        return None
    if a == b:
        return None
    return f"{path}: ours {json.dumps(a)[:120]} vs kustomize {json.dumps(b)[:120]}"


def compare_with_kustomize(build, command):
    if command is None:
        return ("SKIP", "neither kustomize nor kubectl is on PATH")
    rc, text = run(command + [build.folder])
    expect(rc == 0, f"`{' '.join(command)} {rel(build.folder)}` failed: {text}")
    theirs = [d for d in yaml.safe_load_all(text) if d is not None]
    # kustomize names generated ConfigMaps NAME-HASH and rewrites the references it knows of.
    hashed = {}
    for obj in theirs:
        name = obj["metadata"]["name"]
        for gen in build.generated:
            if obj["kind"] == "ConfigMap" and re.fullmatch(re.escape(gen) + r"-[a-z0-9]{10}", name):
                hashed[name] = gen
    for obj in theirs:
        for _, spec in pod_specs(obj):
            for v in spec.get("volumes", []):
                if "configMap" in v:
                    expect(v["configMap"]["name"] in hashed,
                           f"{obj['kind']} {obj['metadata']['name']} mounts ConfigMap "
                           f"{v['configMap']['name']}, which kustomize did not generate (is the "
                           "nameReference configuration missing?)")
    text = json.dumps(theirs)
    for name, gen in hashed.items():
        text = text.replace(json.dumps(name), json.dumps(gen))
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in json.loads(text)}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in build.objects}
    expect(sorted(ours) == sorted(theirs),
           f"objects differ: ours {sorted(ours)}, kustomize's {sorted(theirs)}")
    for key in ours:
        d = diff(ours[key], theirs[key])
        expect(d is None, f"{key[0]} {key[1]} differs at {d}")
    return f"{' '.join(command)}: the same {len(ours)} objects"


# --- main ------------------------------------------------------------------------------------


def main():
    if not TESSERA or not os.access(TESSERA, os.X_OK):
        print(__doc__.strip().splitlines()[-1])
        return 1
    results = Results()
    work = tempfile.mkdtemp(prefix="tessera-k8s-")
    try:
        yaml_files = sorted(os.path.join(d, f) for d, _, files in os.walk(K8S)
                            for f in files if f.endswith((".yaml", ".yml")))
        folders = sorted(os.path.dirname(f) for f in yaml_files
                         if os.path.basename(f) == "kustomization.yaml")

        def parse_all():
            for f in yaml_files:
                try:
                    load_docs(f)
                except yaml.YAMLError as e:
                    raise Failure(f"{rel(f)}: {e}")
            expect(folders, f"no kustomization.yaml under {K8S}")
            return f"{len(yaml_files)} files, {len(folders)} kustomizations"

        results.check("every YAML file under launch/k8s parses", parse_all)
        builds = {}
        for folder in folders:
            label = rel(folder)

            def build(folder=folder):
                builds[folder] = Build(folder)
                return f"{len(builds[folder].objects)} objects"

            results.check(f"{label}: kustomize build (resources, generators, patches, images)",
                          build)
        def all_used():
            if len(builds) < len(folders):
                return ("SKIP", "a kustomization did not build")
            used = set().union(*(b.used for b in builds.values()))
            unused = [rel(f) for f in yaml_files if f not in used]
            expect(not unused, f"not a kustomization, resource, patch, generator file or "
                   f"configuration: {unused}")

        results.check("every YAML file is used by a kustomization", all_used)
        command = kustomize_command()
        for folder, b in builds.items():
            label = rel(folder)
            results.check(f"{label}: kinds and apiVersions", lambda b=b: check_objects(b))
            try:
                topology = topology_of(b)
            except Failure as e:
                results.line("FAIL", f"{label}: topology ConfigMap", str(e))
                continue
            results.check(f"{label}: coordinator Deployment, Services, probes",
                          lambda b=b, t=topology: check_coordinator(b, t))
            results.check(f"{label}: a LeaderWorkerSet per pool, its group, probes, GPUs",
                          lambda b=b, t=topology: check_pools(b, t))
            results.check(f"{label}: a LeaderWorkerSet size other than 1 or TP x PP is refused",
                          lambda b=b, t=topology: check_size_mismatch_fails(b, t))
            sub = os.path.join(work, label.replace("/", "_"))
            os.makedirs(sub)
            BinaryChecks(b, sub, results, label).run_all()
            results.check(f"{label}: equal to kustomize's own build",
                          lambda b=b: compare_with_kustomize(b, command))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    c = results.counts
    print(f"k8s_manifests_test: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped, "
          f"{c['XFAIL']} refused as expected (backend cuda in a build without it)")
    return 1 if c["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
