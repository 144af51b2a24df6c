"""Peak resident memory of this process."""
import resource


def peak_rss_mib() -> float:
    """VmHWM from /proc (Linux), else ru_maxrss. ``ru_maxrss`` survives exec on Linux, so a child started
    by a big parent would report the parent's peak; VmHWM belongs to this process image only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_kib(field: str, path: str) -> float | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Resident memory of this process now (Linux; 0 where /proc is missing)."""
    return (_status_kib("VmRSS:", "/proc/self/status") or 0.0) / 1024.0


def pss_mib() -> float:
    """Proportional set size now: pages shared with other processes count by their share, so the PSS of the
    processes of a job add up to what the job holds (Linux; RSS where smaps_rollup is missing)."""
    pss = _status_kib("Pss:", "/proc/self/smaps_rollup")
    return pss / 1024.0 if pss is not None else rss_mib()
