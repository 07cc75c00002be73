"""Under mpirun a test failing on one rank would leave the other ranks waiting in a collective
call forever; abort the whole job instead, after printing the failure."""
import sys

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_size() > 1:
            print(f"\n[rank {MPI.COMM_WORLD.Get_rank()}] {item.nodeid} failed:\n{report.longreprtext}", file=sys.stderr, flush=True)
            MPI.COMM_WORLD.Abort(1)
