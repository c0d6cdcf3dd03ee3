#!/usr/bin/env python3
"""A TCP forwarder between the guest and the NFS server that can go silent: while the file CUT exists it
neither reads nor forwards a byte in either direction, keeping every connection open (a mount target that
stops answering, not one that refuses). Removing CUT resumes where it stopped.

    cut_proxy.py --listen-port-file FILE --upstream PORT --cut FILE

Prints nothing; writes the port it listens on (127.0.0.1) to --listen-port-file once it listens.
"""
import argparse
import os
import socket
import threading
import time


def pump(src: socket.socket, dst: socket.socket, cut: str) -> None:
    try:
        while True:
            if os.path.exists(cut):
                time.sleep(0.05)
                continue
            src.settimeout(0.2)
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen-port-file", required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--cut", required=True)
    args = ap.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    tmp = args.listen_port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{listener.getsockname()[1]}\n")
    os.replace(tmp, args.listen_port_file)
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", args.upstream))
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b, args.cut), daemon=True).start()


if __name__ == "__main__":
    main()
