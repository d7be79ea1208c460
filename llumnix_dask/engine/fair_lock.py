"""A first-come-first-served lock.

The step loop takes the engine lock back-to-back; with a plain ``threading.Lock`` the releasing thread
usually wins the race to re-acquire it, so a migration call from another thread could starve for many
steps. Here waiters are served strictly in arrival order: a migration call waits for at most the
step that is running when it arrives.
"""

from __future__ import annotations

import threading


class FairLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0

    def acquire(self) -> None:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()

    def release(self) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
