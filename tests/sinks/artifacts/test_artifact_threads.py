"""The artifact store's kept thread pools: one per name for the process, remade in a fork."""

from __future__ import annotations

import os
import sys

import pytest

from sinks.artifacts._files import kept_threads


def test_a_pool_is_made_once_per_name() -> None:
    assert kept_threads("test-pool", 2) is kept_threads("test-pool", 2)
    assert kept_threads("test-pool", 2) is not kept_threads("test-other-pool", 2)
    assert kept_threads("test-pool", 2).submit(lambda: 42).result(timeout=10) == 42


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads running
def test_a_forked_child_gets_pools_of_its_own_that_run_work() -> None:
    """The parent's threads are not in a forked child: its pool would never run work."""
    parent = kept_threads("test-fork-pool", 1)
    assert parent.submit(lambda: 1).result(timeout=10) == 1
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if a pool runs work here
        code = 1
        try:
            child = kept_threads("test-fork-pool", 1)
            if child is not parent and child.submit(lambda: 2).result(timeout=10) == 2:
                code = 0
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
