#!/usr/bin/env bash
# Runs one tensor x pipeline parallel replica of `tessera generate` under mpirun, one process per
# rank (rank = pp_rank * tp + tp_rank: TP groups are neighbouring ranks, so keep them on one node).
#
#   launch/mpirun/generate.sh -tp 2 -pp 2 --model DIR --prompt-ids 1,2,3 --max-tokens 16
#   HOSTFILE=hosts launch/mpirun/generate.sh -tp 4 -pp 2 --model DIR ...   # two nodes
#
# Environment:
#   TESSERA     the binary (default: build/launch/tessera)
#   HOSTFILE    an Open MPI hostfile ("node1 slots=4" per line); unset: this machine only
#   MPIRUN_ARGS extra mpirun arguments (e.g. "--mca btl_tcp_if_include eth0")
# The command it runs is printed first, so it can be adapted.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
TESSERA=${TESSERA:-$here/build/launch/tessera}
tp=1; pp=1
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    -tp|--tensor-parallel-size) tp=${args[$((i + 1))]} ;;
    -pp|--pipeline-parallel-size) pp=${args[$((i + 1))]} ;;
  esac
done
np=$((tp * pp))
cmd=(mpirun -np "$np" --bind-to none)
if [ -n "${HOSTFILE:-}" ]; then
  # One rank per slot, filling each node before the next: TP groups stay inside a node.
  cmd+=(--hostfile "$HOSTFILE" --map-by slot)
else
  cmd+=(--oversubscribe)
fi
[ "$(id -u)" -eq 0 ] && cmd+=(--allow-run-as-root)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Forward the variables that matter to the remote ranks (those that are set).
for v in OMP_NUM_THREADS NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA NCCL_IB_DISABLE \
         NCCL_P2P_DISABLE UCX_TLS UCX_NET_DEVICES CUDA_VISIBLE_DEVICES; do
  [ -n "${!v:-}" ] && cmd+=(-x "$v")
done
# shellcheck disable=SC2206
cmd+=(${MPIRUN_ARGS:-} "$TESSERA" generate --comm mpi "$@")
echo "+ ${cmd[*]}" >&2
exec "${cmd[@]}"
