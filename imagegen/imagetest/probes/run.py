"""Run a probe as a child process with a hard timeout (runs INSIDE the image, any Python 3.8+).

usage: python run.py TIMEOUT_SECONDS PROGRAM [ARGS...]
A framework that aborts can leave a signal handler that sleeps forever (Paddle does); the child
runs in its own session and the whole group is killed on timeout. Exit 124 on timeout.
"""
import os
import signal
import subprocess
import sys


def main():
    timeout = float(sys.argv[1])
    argv = sys.argv[2:]
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        sys.stderr.write("imagegen: probe timed out after %gs and was killed\n" % timeout)
        sys.exit(124)
    if rc < 0:
        sys.stderr.write("imagegen: probe killed by signal %d\n" % -rc)
        sys.exit(128 - rc)
    sys.exit(rc)


if __name__ == "__main__":
    main()
