"""What one write to a loopback TCP socket costs the writer, by size, measured in one run.

A fan-out (agent_server/fanout.py) makes one ``send`` per socket per delivery, and at the
scripted model's full speed those writes are what a worker spends beside the run. This
asks whether fewer bytes per write (permessage-deflate, or ``sendfile``) would make them
cheaper: N sockets to a reader in another process (epoll, one ``recv`` per ready
socket, as the bench client does), then rounds of one ``send`` per socket, the message
sizes interleaved, and the writer's CPU time per ``send`` (``thread_time``, kernel time
included). A trivial system call (``getppid``) is timed for scale: what is left of a
``send`` is the TCP and loopback path, the receiver's wake-up included.

    python bench/socket_writes.py [--sockets 500] [--sizes 1000,22000,64000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import statistics
import time


def read_everything(port: int, sockets: int, total: int) -> None:
    """The reader process: connect, then read until ``total`` bytes have come."""
    connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(sockets)]
    selector = selectors.DefaultSelector()
    for connection in connections:
        connection.setblocking(False)
        selector.register(connection, selectors.EVENT_READ)
    received = 0
    while received < total:
        for key, _ in selector.select():
            with contextlib.suppress(BlockingIOError):
                received += len(key.fileobj.recv(1 << 20))  # type: ignore[union-attr]
    os._exit(0)


def microseconds_per_send(listener: socket.socket, sockets: int, size: int, rounds: int) -> float:
    port = listener.getsockname()[1]
    reader = os.fork()
    if reader == 0:
        read_everything(port, sockets, sockets * size * rounds)
    connections = [listener.accept()[0] for _ in range(sockets)]
    for connection in connections:  # as uvicorn sets them
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b"x" * size
    spent = []
    for _ in range(rounds):
        started = time.thread_time()
        for connection in connections:
            connection.send(data)
        spent.append(time.thread_time() - started)
        time.sleep(0.02)  # the reader drains: every send finds room in the socket buffer
    os.waitpid(reader, 0)
    for connection in connections:
        connection.close()
    return statistics.median(spent) / sockets * 1e6


def microseconds_per_syscall(count: int = 200_000) -> float:
    started = time.thread_time()
    for _ in range(count):
        os.getppid()
    return (time.thread_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--sizes", default="1000,22000,64000", help="bytes per send")
    parser.add_argument("--rounds", type=int, default=20, help="sends per socket and size")
    parser.add_argument("--repeat", type=int, default=2, help="times each size is measured")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(args.sockets)
    results: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(args.repeat):  # interleaved: the machine's noise falls on every size
        for size in sizes:
            results[size].append(microseconds_per_send(listener, args.sockets, size, args.rounds))
    listener.close()
    print(f"one send per socket to {args.sockets} loopback sockets, median of {args.rounds} rounds")
    for size, figures in results.items():
        shown = " ".join(f"{figure:5.1f}" for figure in figures)
        print(f"  {size:7,d} bytes: {shown} µs of the writer's CPU per send")
    print(f"  a trivial system call (getppid): {microseconds_per_syscall():.2f} µs")


if __name__ == "__main__":
    main()
