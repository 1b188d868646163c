"""Work that repeats beside a block of code: a daemon thread that calls an action every
`interval_s` until the block ends."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def every(interval_s: float, action: Callable[[], None], name: str) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            action()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s + 30)
