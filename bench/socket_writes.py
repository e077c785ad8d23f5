"""What one write to a loopback TCP socket costs the writer, by size, measured in one run.

A fan-out (agent_server/fanout.py) makes one ``send`` per socket per delivery, and at the
scripted model's full speed those writes are what a worker spends beside the run. This
asks whether fewer bytes per write (permessage-deflate, or ``sendfile``) would make them
cheaper: N sockets to a reader in another process (epoll, one ``recv`` per ready
socket, as the bench client does), then rounds of one ``send`` per socket, the message
sizes interleaved, and the writer's CPU time per ``send`` (``thread_time``, kernel time
included). A trivial system call (``getppid``) is timed for scale: what is left of a
``send`` is the TCP and loopback path, the receiver's wake-up included.

It then asks whether the writes could leave the event loop's thread: a round of sends
beside some Python work (a run's steps), made inline and then on a thread of their own
(``send`` releases the GIL, but the loop between sends needs it back).

    python bench/socket_writes.py [--sockets 500] [--sizes 1000,22000,64000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import statistics
import threading
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


def python_work(units: int) -> int:
    total = 0
    for number in range(units):
        total += number * number % 7
    return total


def writes_beside_work(
    listener: socket.socket, sockets: int, size: int, rounds: int, units: int
) -> tuple[float, float]:
    """Milliseconds until ``units`` of Python work and one send per socket are both done:
    the sends made first on the same thread, then on a thread of their own (medians)."""
    port = listener.getsockname()[1]
    reader = os.fork()
    if reader == 0:
        read_everything(port, sockets, 2 * sockets * size * rounds)
    connections = [listener.accept()[0] for _ in range(sockets)]
    data = b"x" * size

    def send_all() -> None:
        for connection in connections:
            connection.send(data)

    inline, threaded = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        send_all()
        python_work(units)
        inline.append(time.perf_counter() - started)
        time.sleep(0.02)
        writer = threading.Thread(target=send_all)
        started = time.perf_counter()
        writer.start()
        python_work(units)
        writer.join()
        threaded.append(time.perf_counter() - started)
        time.sleep(0.02)
    os.waitpid(reader, 0)
    for connection in connections:
        connection.close()
    return statistics.median(inline) * 1e3, statistics.median(threaded) * 1e3


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
    units = 200_000
    started = time.perf_counter()
    python_work(units)
    work_ms = (time.perf_counter() - started) * 1e3
    beside = [
        writes_beside_work(listener, args.sockets, 22_000, args.rounds, units)
        for _ in range(args.repeat)
    ]
    listener.close()
    print(f"one send per socket to {args.sockets} loopback sockets, median of {args.rounds} rounds")
    for size, figures in results.items():
        shown = " ".join(f"{figure:5.1f}" for figure in figures)
        print(f"  {size:7,d} bytes: {shown} µs of the writer's CPU per send")
    print(f"  a trivial system call (getppid): {microseconds_per_syscall():.2f} µs")
    print(f"{work_ms:.1f} ms of Python work and 22,000 bytes to each of {args.sockets} sockets:")
    print("  sends inline:       " + " ".join(f"{inline:5.1f}" for inline, _ in beside) + " ms")
    print("  sends on a thread:  " + " ".join(f"{thread:5.1f}" for _, thread in beside) + " ms")


if __name__ == "__main__":
    main()
