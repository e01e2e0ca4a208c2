"""How many threads ingest reads and decodes with: by the CPUs this process may use and
by the kind of source."""

import os
from pathlib import Path

from components.core.settings import DataConfig
from components.data.sources.gcs import GCS_SCHEME

# cgroup v2's CPU quota of this process: "max 100000", or "200000 100000" for 2 CPUs.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota (a
    Kubernetes pod's cpu limit, which os.cpu_count(), the node's count, ignores)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def ingest_threads(cfg: DataConfig, uris: list[str]) -> int:
    """Threads that read and decode ``uris``: data.ingest_workers, or for 0 (the default)
    by source. Objects read one by one from gs:// wait on the network: four threads a CPU,
    at most 32. For local files (a folder, a zip) decoding is the work and more threads
    than CPUs only contend for the interpreter: HAM10000 on 2 CPUs ingested at 1,715 and
    1,727 images/s with 8 threads, 3,125 and 3,120 with 2 (93d8b6b, two runs each;
    bench/ingest_throughput.py, docs/performance.md)."""
    if cfg.ingest_workers:
        return cfg.ingest_workers
    if uris and uris[0].startswith(GCS_SCHEME):
        return min(32, 4 * usable_cpus())
    return usable_cpus()
