"""What the benchmark helpers need of the processes they start: their memory
as /proc reports it, their readiness line, and a stop by pid (SIGTERM, then
SIGKILL if it hangs)."""
import re
import signal
import subprocess
import threading

READY = re.compile(r"listening on ([0-9.]+:[0-9]+)")


def rss_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (the peak) of `pid`, in KiB (0 where /proc has none)."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def resident_kib(pid: int) -> int:
    """VmRSS of `pid`, in KiB; an error if /proc shows none (the process is
    gone)."""
    rss, _ = rss_kib(pid)
    if not rss:
        raise RuntimeError("no VmRSS")
    return rss


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_listening(proc: subprocess.Popen) -> str:
    """The `host:port` of weir's `weir listening on` line on `proc`'s stderr
    (opened with stderr=PIPE, text=True); from then on the rest of stderr is
    drained on a thread, so weir never blocks on a full pipe."""
    for line in proc.stderr:
        m = READY.search(line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return m.group(1)
    raise RuntimeError(f"{proc.args} exited before listening")
