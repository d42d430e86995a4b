#!/usr/bin/env python3
"""Two cluster numbers of issue 25 (CLUSTER.md, "Numbers"): OIs per second
across two nodes (each a connect, an OI, its OK and a close: one claim and
one release), and the time from kill -9 of a node to its id being handed out
on the other. Usage: cluster-numbers.py SERVER_BINARY (redis-server on PATH).
"""
import os, signal, socket, struct, subprocess, sys, tempfile, threading, time

SERVER = sys.argv[1]
OK, ERRO, OI = 1, 2, 3  # frame types (PROTOCOL.md)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def oi(port, origin=0, keep=False):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(struct.pack(">HHHH", OI, origin, 65535, 0))
    got = b""
    while len(got) < 8:
        chunk = s.recv(8 - len(got))
        if not chunk:
            raise SystemExit("closed before the OI's answer")
        got += chunk
    kind, _, dest, _ = struct.unpack(">HHHH", got)
    if keep:
        return s, dest
    s.close()
    return dest if kind == OK else None


def main():
    tmp = tempfile.mkdtemp()
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--dir", tmp],
                             stdout=subprocess.DEVNULL)
    wait_port(rport)
    url = f"redis://127.0.0.1:{rport}"
    ports = [free_port(), free_port()]
    nodes = [subprocess.Popen([SERVER, str(p), "--cluster", url, "--node", f"n{i}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i, p in enumerate(ports)]
    for p in ports:
        wait_port(p)
    try:
        count, threads, seconds = [0], 8, 3.0
        end = time.time() + seconds

        def worker(port):
            n = 0
            while time.time() < end:
                if oi(port) is not None:
                    n += 1
            count[0] += n

        ts = [threading.Thread(target=worker, args=(ports[i % 2],)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        print(f"OIs/s across 2 nodes ({threads} clients): {count[0] / seconds:.0f}")

        held, x = oi(ports[1], keep=True)
        nodes[1].send_signal(signal.SIGKILL)
        nodes[1].wait()
        killed = time.time()
        while True:
            s, got = oi(ports[0], keep=True)
            if got == x:
                break
            s.close()
            time.sleep(0.05)
        print(f"kill -9 to id {x} handed out again: {time.time() - killed:.2f} s")
        held.close()
    finally:
        for n in nodes:
            n.kill()
        redis.kill()


main()
