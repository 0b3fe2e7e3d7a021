"""Runs a command (argv[1:]) in its own process group until this script's parent exits, then stops
the whole group. The test harness starts servers through it (MLflow), so that a server shared by the
tests of one test binary ends with that binary, however the binary ends."""

import os
import signal
import subprocess
import sys
import time

parent = os.getppid()
child = subprocess.Popen(sys.argv[1:], start_new_session=True)


def stop(*_):
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        sys.exit(0)
    deadline = time.time() + 10
    while time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
while os.getppid() == parent and child.poll() is None:
    time.sleep(0.5)
if child.poll() is not None:
    sys.exit(child.returncode)
stop()
