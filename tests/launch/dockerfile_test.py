#!/usr/bin/env python3
"""Checks the Dockerfile against a real build, without Docker (CI has no daemon):

- the runtime stage installs the Debian package of every shared library the built `tessera`
  links (`ldd`, then `dpkg -S`; libraries outside Debian, such as /usr/local/cuda's, are left to
  a GPU image); packages this build does not link are noted (a build without UCX links fewer);
- the build stage runs scripts that exist with options CMake knows, and copies the binary from
  where that build puts it;
- the image name and entry point are the ones the Kubernetes manifests run.

When `docker` can reach a daemon, TESSERA_DOCKER_BUILD=1 also builds the image and runs
`tessera --help` in it.
Usage: dockerfile_test.py TESSERA_BINARY SOURCE_DIR
"""
import os
import re
import subprocess
import sys


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def stages(text):
    """[(base image, [instruction lines])] with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append((line.split()[1], []))
        elif result:
            result[-1][1].append(line)
    return result


def linked_packages(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    packages, outside = set(), []
    for line in out.splitlines():
        m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if not m:
            continue  # linux-vdso
        path = m.group(1)
        found = None
        for candidate in (path, os.path.realpath(path)):
            r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if r.returncode == 0:
                found = r.stdout.split(":")[0].strip()
                break
        if found:
            packages.add(found)
        else:
            outside.append(path)
    return packages, outside


def main():
    binary, source = sys.argv[1], sys.argv[2]
    with open(os.path.join(source, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    parsed = stages(dockerfile)
    if len(parsed) != 2:
        fail(f"expected a build and a runtime stage, found {len(parsed)}")
    (build_base, build), (run_base, runtime) = parsed
    if build_base != "debian:12" or run_base != "debian:12":
        fail(f"both stages should be debian:12 (the README's target), got {build_base}, {run_base}")

    # The runtime packages against the libraries of a real build.
    install = [i for i in runtime if i.startswith("RUN ") and "apt-get install" in i]
    if len(install) != 1:
        fail("expected one RUN apt-get install in the runtime stage")
    listed = set(re.findall(r"\b(lib[\w.+-]+|zlib1g)\b", install[0].split("install", 1)[1]))
    needed, outside = linked_packages(binary)
    missing = sorted(needed - listed)
    if missing:
        fail(f"the runtime stage lacks {missing} (libraries `ldd {binary}` lists)")
    extra = sorted(listed - needed)
    if extra:  # a build without an optional backend (UCX, Gloo, MPI) links fewer: not an error
        print(f"note: the runtime stage installs {extra}, which this build does not link")
    for path in outside:
        if not path.startswith("/usr/local/cuda"):
            fail(f"{path} is linked but belongs to no Debian package")

    # The build stage: scripts that exist, CMake options that exist, the binary where it lands.
    text = " ".join(build)
    for script in re.findall(r"bash (scripts/[\w.-]+)", text):
        if not os.path.exists(os.path.join(source, script)):
            fail(f"the build stage runs {script}, which does not exist")
    with open(os.path.join(source, "scripts", "install-deps.sh"), encoding="utf-8") as f:
        if "TESSERA_SKIP_PYTHON" in text and "TESSERA_SKIP_PYTHON" not in f.read():
            fail("the build stage sets TESSERA_SKIP_PYTHON, which install-deps.sh ignores")
    cmake = open(os.path.join(source, "CMakeLists.txt"), encoding="utf-8").read()
    for option in re.findall(r"-D(TESSERA_\w+)=", text):
        if f"option({option} " not in cmake:
            fail(f"the build stage sets -D{option}, which CMakeLists.txt does not declare")
    m = re.search(r"BUILD_DIR=(\S+)", text)
    copy = [i for i in runtime if i.startswith("COPY --from=build ")]
    if not m or not copy or copy[0].split()[2] != f"{m.group(1)}/launch/tessera":
        fail("the runtime stage should copy BUILD_DIR/launch/tessera from the build stage")
    if copy[0].split()[3] != "/usr/local/bin/tessera":
        fail("the binary should land on PATH as /usr/local/bin/tessera")
    if not any(i.startswith("USER ") and not i.split()[1].startswith("0") for i in runtime):
        fail("the runtime stage should run as an unprivileged USER")

    # What the manifests run.
    k8s = os.path.join(source, "launch", "k8s")
    images = set()
    for root, _, files in os.walk(k8s):
        for name in files:
            if name.endswith(".yaml"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    images.update(re.findall(r"^\s*image:\s*(\S+)", f.read(), re.M))
    if images != {"tessera:latest"}:
        fail(f"the manifests run {sorted(images)}; the Dockerfile documents tessera:latest")
    if "docker build -t tessera:latest ." not in dockerfile:
        fail("the Dockerfile should say how to build tessera:latest")

    if os.environ.get("TESSERA_DOCKER_BUILD") == "1":
        subprocess.run(["docker", "build", "-t", "tessera:test", source], check=True)
        subprocess.run(["docker", "run", "--rm", "tessera:test", "--help"], check=True,
                       stdout=subprocess.DEVNULL)
    print(f"dockerfile_test: ok ({len(needed)} packages)")


if __name__ == "__main__":
    main()
