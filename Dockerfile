# The image the Kubernetes manifests run (launch/k8s: `tessera:latest`, the binary on PATH as
# `tessera`): tessera's CPU build on Debian 12, the same system the README's commands target.
#
#   docker build -t tessera:latest .
#
# Stage 1 installs the build dependencies with the project's own script and builds the binary
# (Release, no tests). Stage 2 is Debian 12 with only the shared libraries that binary links
# (tests/launch/dockerfile_test.py checks the list against `ldd` of a real build) and the
# binary, run as an unprivileged user. A GPU image needs a base with the CUDA 13 toolkit and
# driver libraries instead (issue #8); this one has the CPU backend only.
FROM debian:12 AS build
WORKDIR /src
COPY . .
RUN TESSERA_SKIP_PYTHON=1 bash scripts/install-deps.sh \
 && BUILD_DIR=/src/build BUILD_TYPE=Release bash scripts/build.sh -DTESSERA_BUILD_TESTS=OFF \
      -DTESSERA_WERROR=OFF \
 && strip --strip-debug /src/build/launch/tessera

FROM debian:12
# One package per line; keep in step with the libraries `ldd tessera` lists (the test says which
# is missing).
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      ca-certificates \
      libabsl20220623 \
      libbrotli1 \
      libc-ares2 \
      libc6 \
      libcpp-httplib0.11 \
      libevent-core-2.1-7 \
      libevent-pthreads-2.1-7 \
      libgcc-s1 \
      libgfortran5 \
      libgloo0 \
      libgomp1 \
      libgrpc++1.51 \
      libgrpc29 \
      libhiredis0.14 \
      libhwloc15 \
      libibverbs1 \
      libnl-3-200 \
      libnl-route-3-200 \
      libnuma1 \
      libopenblas0-pthread \
      libopenmpi3 \
      libpcre2-8-0 \
      libprotobuf32 \
      libquadmath0 \
      libre2-9 \
      libssl3 \
      libstdc++6 \
      libucx0 \
      libudev1 \
      libutf8proc2 \
      libyaml-cpp0.7 \
      zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/launch/tessera /usr/local/bin/tessera
# Fails the build when a shared library is missing.
RUN tessera --help >/dev/null
# OpenMPI and UCX refuse or warn as root; the manifests' volumes (emptyDir, the model PVC
# read-only) need no particular user.
USER 65532:65532
ENTRYPOINT ["tessera"]
CMD ["--help"]
