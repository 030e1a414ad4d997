"""Read ahead of the parser: a thread drains a chunk iterator (the engine's HTTP response, a file)
into a byte-bounded queue, coalescing small pieces into blocks of about 1 MiB, so the producer
(dockerd writing the save stream) is never held up while the parser hashes and parses.

Socket reads and file reads release the GIL, and so do the parser's hashlib/zlib calls on large
buffers, so the two overlap on two cores. Memory: at most `max_bytes` (+ one block) in flight.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator

BLOCK = 1 << 20
MAX_BYTES = 8 << 20
_END = object()


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(chunks: Iterable[bytes], *, max_bytes: int = MAX_BYTES, block: int = BLOCK) -> Iterator[bytes]:
    """Yield the bytes of `chunks`, in order, in blocks of about `block` bytes, read by a thread.
    An exception raised by the iterator is re-raised here, in the consumer. Closing the returned
    generator stops the thread (it closes `chunks` if it can)."""
    cond = threading.Condition()
    items: deque = deque()
    state = {"bytes": 0, "stop": False}

    def put(item, n: int) -> bool:
        with cond:
            while state["bytes"] >= max_bytes and not state["stop"]:
                cond.wait()
            if state["stop"]:
                return False
            items.append(item)
            state["bytes"] += n
            cond.notify_all()
            return True

    def run() -> None:
        it = iter(chunks)
        parts: list[bytes] = []
        have = 0
        try:
            for c in it:
                if not c:
                    continue
                parts.append(c)
                have += len(c)
                if have >= block:
                    data = parts[0] if len(parts) == 1 else b"".join(parts)
                    parts, have = [], 0
                    if not put(data, len(data)):
                        return
            if parts:
                data = b"".join(parts)
                put(data, len(data))
            put(_END, 0)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failed(exc), 0)
        finally:
            close = getattr(it, "close", None)
            if close is not None and state["stop"]:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass

    t = threading.Thread(target=run, name="imagegen-savestream-read", daemon=True)
    t.start()
    try:
        while True:
            with cond:
                while not items:
                    cond.wait()
                item = items.popleft()
                if type(item) is bytes:
                    state["bytes"] -= len(item)
                cond.notify_all()
            if item is _END:
                return
            if type(item) is _Failed:
                raise item.exc
            yield item
    finally:
        with cond:
            state["stop"] = True
            items.clear()
            cond.notify_all()
