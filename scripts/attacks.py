#!/usr/bin/env python3
"""Measures what hostile or broken clients make one wspair node hold, and its CPU per MB.

Starts the given wspair binary on loopback (a fresh process per attack, so one attack's memory
does not hide another's), runs each attack with raw sockets, and prints a table: the attack,
what the node's RSS grew by per attacking client, and what became of the connections. Then
relays 1-byte and 8 KiB messages through one pair and reports the node's CPU per MB.

Usage: python3 scripts/attacks.py [BINARY]   (default target/release/wspair; build it first
with `cargo build --release`). Standard library only; loopback only; about 3 minutes.
       python3 scripts/attacks.py cpu BINARY...   (only CPU per MB, binaries interleaved, medians
of 3 runs; about 1 minute per binary)
"""

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

BINARY = "target/release/wspair"
PORT = 14024
ID_COUNTER = [0]


def channel_id():
    ID_COUNTER[0] += 1
    return ("a%031d" % ID_COUNTER[0])[:32]


class Node:
    def __init__(self, *args):
        env = dict(os.environ, RUST_LOG="error")
        self.proc = subprocess.Popen(
            [BINARY, "serve", "--admin-port", "0", "--outer-ip", "127.0.0.1", "--outer-port", str(PORT), *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", PORT)).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.2)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settled_rss_kib(self, quiet=1.0, limit=15.0):
        deadline = time.time() + limit
        last, since = self.rss_kib(), time.time()
        while time.time() < deadline:
            time.sleep(0.1)
            now = self.rss_kib()
            if now > last:
                last, since = now, time.time()
            elif time.time() - since >= quiet:
                break
        return last

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def frame(opcode, payload=b"", fin=True, rsv1=False, mask=b"\x00\x00\x00\x00"):
    """A masked client frame (a zero mask keeps the payload as is)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + mask + payload


def upgrade(role, cid, deflate=False):
    sock = socket.create_connection(("127.0.0.1", PORT))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    extension = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    request = (f"GET /channel?type={role}&channelId={cid} HTTP/1.1\r\nHost: x\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extension}\r\n")
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise RuntimeError("closed during upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    return sock


def send_until_blocked(sock, data, seconds):
    """Writes `data` until a write blocks for `seconds` or the peer closes; returns writes."""
    sock.settimeout(seconds)
    n = 0
    try:
        while True:
            sock.sendall(data)
            n += 1
    except (socket.timeout, OSError):
        return n


def is_open(sock):
    """True unless the node has closed the connection; reads (and discards) what is waiting."""
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(1 << 20) == b"":
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def deflated(message):
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


RESULTS = []


def attack(name, bound, clients, run, *node_args):
    node = Node(*node_args)
    before = node.rss_kib()
    outcome = run(node)
    after = node.settled_rss_kib()
    grown = max(after - before, 0)
    RESULTS.append((name, bound, clients, grown, grown / clients, outcome))
    print(f"{name}: node RSS {before} -> {after} KiB, {grown / clients:.1f} KiB per client; {outcome}",
          flush=True)
    node.stop()


def ping_flood(node):
    sock = upgrade("app", channel_id())
    pings = frame(0x9, b"p" * 125) * 256
    sock.settimeout(0.5)
    end, writes = time.time() + 10, 0
    while time.time() < end:
        try:
            sock.sendall(pings)
            writes += 1
        except socket.timeout:
            pass
        except OSError:
            break
    return f"{writes * 256} pings written in 10 s; session open: {is_open(sock)}"


def flood_into_non_readers(compressed, pairs):
    def run(node):
        zeros = b"\0" * 10_000
        message = frame(0x2, deflated(zeros), rsv1=True) if compressed else frame(0x2, zeros)
        keep, sent = [], 0
        for _ in range(pairs):
            cid = channel_id()
            keep.append(upgrade("web", cid))
            sender = upgrade("app", cid, deflate=compressed)
            keep.append(sender)
            if compressed:
                sender.sendall(message * 3000)
                sent += 3000
            else:
                sent += send_until_blocked(sender, message, 0.5)
        return f"{sent} messages of 10 kB sent"
    return run


def pipelining(node):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000
    socks = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", PORT))
        sock.settimeout(0.2)
        try:
            sock.sendall(request)
        except OSError:
            pass
        socks.append(sock)
    started = time.time()
    while any(is_open(sock) for sock in socks) and time.time() - started < 70:
        time.sleep(0.5)
    still = sum(is_open(sock) for sock in socks)
    return f"{still} of 20 still open {time.time() - started:.0f} s later"


def slow_heads(node):
    socks = []
    head = (b"GET /channel HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 7_900)
    for _ in range(1000):
        sock = socket.create_connection(("127.0.0.1", PORT))
        sock.sendall(head)
        socks.append(sock)
    time.sleep(1)
    open_now = sum(is_open(sock) for sock in socks)
    return f"{open_now} of 1000 open after 1 s (a head of 7.9 kB, never finished)"


def big_heads(node):
    statuses = {}
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", PORT))
        sock.settimeout(5)
        try:
            sock.sendall(b"GET /channel HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 65_000 + b"\r\n\r\n")
            status = sock.recv(12)[9:12].decode() or "closed"
        except OSError as err:
            status = type(err).__name__
        statuses[status] = statuses.get(status, 0) + 1
    return "answers: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items()))


def cpu_per_mb(size, seconds=5.0):
    node = Node()
    cid = channel_id()
    web = upgrade("web", cid)
    app = upgrade("app", cid)
    received = [0]
    stop = threading.Event()

    def reader():
        web.settimeout(0.5)
        while not stop.is_set():
            try:
                data = web.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                return
            received[0] += len(data)

    thread = threading.Thread(target=reader)
    thread.start()
    batch = frame(0x2, b"x" * size) * max(1, 65536 // (size + 6))
    cpu0, t0 = node.cpu_seconds(), time.time()
    app.settimeout(1)
    while time.time() - t0 < seconds:
        try:
            app.sendall(batch)
        except socket.timeout:
            pass
    time.sleep(0.5)
    stop.set()
    thread.join()
    cpu = node.cpu_seconds() - cpu0
    header = 2 if size < 126 else 4
    payload_mb = received[0] * size / (size + header) / 1e6
    node.stop()
    print(f"{size}-byte messages: {payload_mb:.1f} MB of payload relayed, node CPU {cpu:.2f} s, "
          f"{cpu / payload_mb * 1000:.1f} ms per MB", flush=True)
    return payload_mb, cpu


def compare_cpu(binaries, runs=3):
    """CPU per MB of each binary, runs interleaved, medians: `attacks.py cpu BIN...`."""
    global BINARY
    figures = {(binary, size): [] for binary in binaries for size in (1, 8192)}
    for _ in range(runs):
        for binary in binaries:
            BINARY = binary
            for size in (1, 8192):
                mb, cpu = cpu_per_mb(size)
                figures[(binary, size)].append((cpu / mb * 1000, mb / 5))
    print()
    print("| binary | 1 B: ms CPU per MB | 1 B: MB/s | 8 KiB: ms CPU per MB | 8 KiB: MB/s |")
    print("|---|---:|---:|---:|---:|")
    for binary in binaries:
        cells = []
        for size in (1, 8192):
            values = figures[(binary, size)]
            cells.append(sorted(v[0] for v in values)[len(values) // 2])
            cells.append(sorted(v[1] for v in values)[len(values) // 2])
        print(f"| {binary} | {cells[0]:.1f} | {cells[1]:.1f} | {cells[2]:.2f} | {cells[3]:.0f} |")


def main():
    attack("ping flood, 125-byte pings, 10 s, never reads", "one pong waits; reads stop", 1,
           ping_flood)
    attack("compressed flood into non-readers, 3 000 x 10 kB zeros per sender",
           "outer.send-queue-bytes", 20, flood_into_non_readers(True, 20))
    attack("plain flood into non-readers, 10 kB messages", "outer.send-queue-bytes", 40,
           flood_into_non_readers(False, 40))
    attack("pipelining 20 000 GET /healthz without reading", "outer.handshake-timeout, one request",
           20, pipelining)
    attack("slow request heads, 7.9 kB each, never finished", "outer.max-request-head", 1000,
           slow_heads)
    attack("64 kB request heads", "outer.max-request-head (431)", 100, big_heads)
    print()
    print("| attack | bound | clients | node RSS growth | per client | outcome |")
    print("|---|---|---:|---:|---:|---|")
    for name, bound, clients, grown, per, outcome in RESULTS:
        print(f"| {name} | {bound} | {clients} | {grown / 1024:.1f} MiB | {per:.1f} KiB | {outcome} |")
    print()
    small = cpu_per_mb(1)
    large = cpu_per_mb(8192)
    ratio = (small[1] / small[0]) / (large[1] / large[0])
    print(f"CPU per MB, 1-byte against 8 KiB messages: {ratio:.0f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["cpu"]:
        compare_cpu(sys.argv[2:] or [BINARY])
    else:
        BINARY = sys.argv[1] if len(sys.argv) > 1 else BINARY
        main()
