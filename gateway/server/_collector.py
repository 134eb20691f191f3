"""The garbage collector, set for a server process (`gateway serve`).

CPython's collector runs a young-generation pass whenever container allocations outnumber
deallocations by 700. With fifty requests in flight a server crosses that every few requests:
each pass scans the in-flight requests' objects and promotes those still alive, and the
promoted ones, freed by reference counting moments later, count as pending in the oldest
generation until a full pass scans the whole heap (~100,000 objects: the modules, the app,
the policy). Under wrk's load (`make bench`) that was 17% of the server's CPU.

So, once the app is loaded, what exists is frozen (it lives as long as the process; full
passes skip it) and the young-generation threshold is raised: objects freed by reference
counting, as a request's are, never count against it, so a pass runs only after 10,000 net
allocations. Garbage in reference cycles (an exception and its traceback) waits for that
pass: a few megabytes at most. An app mounted in another server keeps that process's settings.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net container allocations between young-generation passes (CPython's default: 700)."""


def collect_as_a_server() -> None:
    """Freeze the heap as loaded (after collecting its garbage, which freezing would keep
    for good) and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
