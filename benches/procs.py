"""What the benchmark helpers need of the processes they start: their memory
as /proc reports it, and a stop by pid (SIGTERM, then SIGKILL if it hangs)."""
import signal
import subprocess


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
