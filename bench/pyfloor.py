"""The Python floor: the least a Python queue server on uvloop can do per message.

`python -m bench.pyfloor --port P --data-dir D` speaks just enough of kestrelq's wire for the
bench (`set q f e n`, `get q`, `version`): a FIFO per queue in memory, and, like kestrelq,
every set and every get appended to a journal file with one writev before the reply (a
length prefix, no checksum, no fsync). No validation, no limits, no recovery, no reliable
reads: it is not a queue server, it is a ruler. Benchmarked beside kestrelq, it shows how much
of kestrelq's cost is its own work and how much is the language and the event loop, which no
amount of work on kestrelq's Python can remove.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
from collections import deque
from pathlib import Path

_LENGTH = struct.Struct("<I")
_REMOVE = _LENGTH.pack(0)


class FloorProtocol(asyncio.Protocol):
    def __init__(self, queues: dict[bytes, deque[tuple[bytes, bytes]]], journal_fd: int) -> None:
        self.queues = queues
        self.fd = journal_fd
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        log: list[bytes] = []
        start = 0
        while True:
            eol = buf.find(b"\r\n", start)
            if eol < 0:
                break
            parts = bytes(buf[start:eol]).split()
            if parts[0] == b"set":
                size = int(parts[4])
                end = eol + 2 + size
                if len(buf) < end + 2:
                    break
                value = bytes(buf[eol + 2 : end])
                log += (_LENGTH.pack(size), value)
                self.queues.setdefault(parts[1], deque()).append((parts[2], value))
                out.append(b"STORED\r\n")
                start = end + 2
                continue
            start = eol + 2
            if parts[0] == b"get":
                items = self.queues.get(parts[1].split(b"/")[0])
                if items:
                    flags, value = items.popleft()
                    log.append(_REMOVE)
                    head = b"VALUE %s %s %d\r\n" % (parts[1], flags, len(value))
                    out += (head, value, b"\r\nEND\r\n")
                else:
                    out.append(b"END\r\n")
            elif parts[0] == b"version":
                out.append(b"VERSION pyfloor\r\n")
            else:
                out.append(b"ERROR\r\n")
        del buf[:start]
        if log:
            os.writev(self.fd, log)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(host: str, port: int, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    queues: dict[bytes, deque[tuple[bytes, bytes]]] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(queues, fd), host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pyfloor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.host, args.port, args.data_dir))


if __name__ == "__main__":
    main()
