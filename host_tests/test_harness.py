"""The test harness's own host-wide lock (harness.one_at_a_time_on_this_host)."""

import fcntl
import os
import subprocess
import sys
import tempfile

import pytest
from harness import one_at_a_time_on_this_host

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_host_wide_lock_excludes_another_process():
    name = f"selftest-{os.getpid()}"
    path = os.path.join(tempfile.gettempdir(), f"vfpga-tests-{name}.lock")
    code = (f"import sys; sys.path.insert(0, {HERE!r}); from harness import one_at_a_time_on_this_host\n"
            f"with one_at_a_time_on_this_host({name!r}):\n    print('held', flush=True); sys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with open(path, "a") as f:
            with pytest.raises(BlockingIOError):  # held by the other process
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
        with one_at_a_time_on_this_host(name):  # released: taken at once
            with open(path, "a") as f, pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        holder.kill()
        os.unlink(path)
