#!/usr/bin/env python3
"""The host end of NetTests, run in L1's network namespace beside svmm:

  host-side.py serve PORT COUNT OUT     accept COUNT connections on 10.0.0.1:PORT,
                                        one "BYTES SHA256" line per connection in OUT
  host-side.py send HOST PORT FILE      send FILE to HOST:PORT (retrying the
                                        connect for 60 s while the guest's nc starts)
"""
import hashlib
import socket
import sys
import time


def serve(port, count, out):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.0.0.1", port))
    s.listen(count)
    with open(out, "w") as f:
        for _ in range(count):
            c, _ = s.accept()
            h, n = hashlib.sha256(), 0
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                h.update(b)
                n += len(b)
            c.close()
            f.write(f"{n} {h.hexdigest()}\n")
            f.flush()


def send(host, port, path):
    deadline = time.monotonic() + 60
    while True:
        try:
            c = socket.create_connection((host, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    c.settimeout(120)
    with open(path, "rb") as f:
        c.sendall(f.read())
    c.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        send(sys.argv[2], int(sys.argv[3]), sys.argv[4])
