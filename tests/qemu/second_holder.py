#!/usr/bin/env python3
"""The replacement sealer, on the NFS server's side: takes the lease file's lock the way the server grants
it to clients (nfs-ganesha's VFS backend holds a client's NFSv4 lock as a POSIX lock on the exported file,
so this lock and a client's exclude each other), as soon as the server lets go of the first holder's lock
(when that client's NFS lease expired). Then writes itself into the lease file as a sealer would, holds
it until the file RELEASE exists, and lets go.

    second_holder.py LEASE_FILE TAKEN_FILE RELEASE_FILE RELEASED_FILE

TAKEN_FILE gets how long the lock took to get (seconds, first line: the server had to expire the first
holder's NFS lease first); RELEASED_FILE the monotonic time of the release.
"""
import fcntl
import os
import sys
import time

HOLDER = "i-0second0000000000 pid 4242"


def main() -> int:
    lease, taken, release, released = sys.argv[1:5]
    started = time.monotonic()
    deadline = started + 300
    while True:
        try:
            fd = os.open(lease, os.O_RDWR)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                os.close(fd)
        if time.monotonic() > deadline:
            print("second_holder: never got the lease", file=sys.stderr)
            return 1
        time.sleep(0.2)
    now = time.monotonic()
    os.ftruncate(fd, 0)
    os.pwrite(fd, HOLDER.encode(), 0)
    os.fsync(fd)
    with open(taken, "w") as f:
        f.write(f"{now - started:.1f}\n")
    while not os.path.exists(release):
        time.sleep(0.2)
    fcntl.lockf(fd, fcntl.LOCK_UN)
    os.close(fd)
    with open(released, "w") as f:
        f.write(f"{time.monotonic()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
