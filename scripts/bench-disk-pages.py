#!/usr/bin/env python3
"""What a durable commit costs on this disk, by how many 4 KiB pages it writes and where.

    python3 scripts/bench-disk-pages.py [DIR]     (default: $TMPDIR or /tmp)

A commit of the embedded store (LMDB) writes every page its transaction dirtied, each with its
own pwrite, then one fdatasync: its time depends on how many pages there are and how far apart
they sit, much more than on the bytes. This writes a 256 MiB file in DIR (removed at the end)
and times, 40 times each, page writes followed by one fdatasync: spread over the whole file,
within a window of a few pages, and as one sequential write. Prints the median and p90 in ms.
"""

import os
import random
import statistics
import sys
import tempfile
import time

PAGE = 4096
SIZE = 256 << 20
PAGES = SIZE // PAGE
ROUNDS = 40


def timed(name, commit):
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        commit()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(f"{name:48s} p50 {statistics.median(times):6.2f} ms   p90 {times[int(ROUNDS * 0.9)]:6.2f} ms")


def main():
    where = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    fd, path = tempfile.mkstemp(prefix="disk-pages-", dir=where)
    try:
        block = b"\1" * (1 << 20)
        for i in range(SIZE >> 20):
            os.pwrite(fd, block, i << 20)
        os.fsync(fd)
        page = os.urandom(PAGE)

        def pages(count, window):
            def commit():
                base = random.randrange(PAGES - window + 1)
                for p in sorted(random.sample(range(window), count)):
                    os.pwrite(fd, page, (base + p) * PAGE)
                os.fdatasync(fd)

            return commit

        offset = [0]

        def sequential(nbytes):
            data = os.urandom(nbytes)

            def commit():
                os.pwrite(fd, data, offset[0])
                offset[0] = (offset[0] + nbytes) % (SIZE - nbytes)
                os.fdatasync(fd)

            return commit

        print(f"# {where}: {ROUNDS} commits each")
        timed("fdatasync alone", lambda: os.fdatasync(fd))
        for count in (1, 32, 75, 150, 250):
            timed(f"{count} pages anywhere in 256 MiB", pages(count, PAGES))
        for window in (150, 600, 5000):
            timed(f"150 pages within {window} pages", pages(150, window))
        timed("620 KiB in one write", sequential(620 * 1024))
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    main()
