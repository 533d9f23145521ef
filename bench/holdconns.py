"""Hold N idle connections open (run inside a client pod's netns by the rig; standard library only).

Each connection sends one keep-alive HTTP request and reads the answer, so every hop (capture,
tunnel, far agent, server) has really been set up; then all stay open and idle. Prints ``ready
<n>`` once they are, and closes everything when stdin closes (or on SIGTERM).
"""
import resource
import socket
import sys
import time


def main() -> int:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 100)), hard))
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    conns = []
    for i in range(count):
        s = None
        for attempt in range(5):
            try:
                s = socket.create_connection((host, port), timeout=10)
                s.sendall(request)
                if not s.recv(4096):
                    raise ConnectionError("closed before answering")
                break
            except OSError as exc:
                if s is not None:
                    s.close()
                s = None
                if attempt == 4:
                    print(f"error connection {i}: {exc}", flush=True)
                    return 1
                time.sleep(0.2)
        conns.append(s)
    print(f"ready {len(conns)}", flush=True)
    sys.stdin.read()  # until the rig closes our stdin
    for s in conns:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
