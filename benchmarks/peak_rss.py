"""Peak resident memory of this process, in MB.

Linux's ``ru_maxrss`` survives ``exec``: a child started from a large benchmark process would report the
parent's size. ``VmHWM`` in /proc/self/status belongs to the process's own address space, so it is used
where it exists.
"""

import resource


def peak_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux; macOS gives bytes
