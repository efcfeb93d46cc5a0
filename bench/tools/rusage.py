#!/usr/bin/env python3
"""Fallback for `/usr/bin/time -v` on machines without it: runs a command, polls VmHWM (peak RSS) of the
process and its descendants from /proc every 20 ms (VmHWM only grows, so only growth in the last 20 ms is missed).
A command that exits before the first sample gets wait4's ru_maxrss instead (an upper bound, see below).
Usage: rusage.py RESULT_FILE TIMEOUT_S -- cmd...   Writes "Maximum resident set size (kbytes): N" to RESULT_FILE
(the same line /usr/bin/time -v prints) and "Wall seconds: S" (spawn to exit, without this script's start-up) and exits with the command's status."""
import os
import shutil
import signal
import subprocess
import sys
import time


def tree_hwm(pid):
    best = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    best = int(line.split()[1])
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for c in f.read().split():
                    best = max(best, tree_hwm(int(c)))
    except (OSError, ValueError):
        pass
    return best


def main():
    result, timeout = sys.argv[1], float(sys.argv[2])
    cmd = sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:]
    # posix_spawn (vfork) when possible: a fork()ed child would count this Python's pages in its ru_maxrss.
    exe = shutil.which(cmd[0]) or cmd[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen([os.path.abspath(exe)] + cmd[1:], close_fds=False)
    peak, deadline = 0, time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        peak = max(peak, tree_hwm(proc.pid))
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGKILL)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if peak == 0:
        # Exited before the first sample. ru_maxrss is an upper bound here: it includes this Python's own
        # high-water mark, inherited by the child until its exec().
        peak = ru.ru_maxrss
    with open(result, "w") as f:
        f.write(f"Maximum resident set size (kbytes): {peak}\nWall seconds: {wall:.4f}\n")
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
