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
