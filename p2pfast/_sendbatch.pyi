"""Types of the compiled batched output (``_sendbatch.pyx``); twin: ``_sendbatch_py``."""

from typing import Any, final

BATCH: int

@final
class BatchSender:
    blocked: bool
    errors: int
    syscalls: int
    def __init__(self, fd: int, family: int) -> None: ...
    def close(self) -> None: ...
    def send(self, items: list[tuple[bytes, tuple[Any, ...]]], start: int = 0) -> int: ...
