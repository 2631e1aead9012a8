"""Types of the compiled codec (``_codec.pyx``); its pure twin ``_codec_py`` has the same API."""

from collections.abc import Callable
from typing import Any

from typing_extensions import disjoint_base

from .addr import parse_addr as parse_addr
from .errors import ProtocolError as ProtocolError

MAX_MESSAGE_SIZE: int
MAX_U32: int
MAX_U64: int
STUN_MAGIC: bytes
TYPE_NAMES: tuple[str, ...]

@disjoint_base
class Message:
    id: str
    type: int
    timestamp: int
    payload: Any
    sender_addr: str | None
    sequence_number: int | None
    requires_ack: bool
    ack_for: str | None
    def __init__(
        self,
        id: str,
        type: int,
        timestamp: int,
        payload: Any = None,
        sender_addr: str | None = None,
        sequence_number: int | None = None,
        requires_ack: bool = False,
        ack_for: str | None = None,
    ) -> None: ...
    @property
    def type_name(self) -> str: ...
    def as_tuple(self) -> tuple[Any, ...]: ...
    def __eq__(self, other: object, /) -> bool: ...

def normalize_uuid(value: object) -> str: ...
def decode(data: bytes) -> Message: ...
def new_id() -> str: ...
def set_id_entropy(source: Callable[[int], bytes] | None) -> None: ...
def encode_raw(
    type: int,
    payload_json: bytes,
    timestamp: int,
    id: str | None = None,
    sender_addr: str | None = None,
    sequence_number: int | None = None,
    requires_ack: bool = False,
    ack_for: str | None = None,
) -> bytes: ...
def encode(
    type: int,
    payload: Any,
    timestamp: int,
    id: str | None = None,
    sender_addr: str | None = None,
    sequence_number: int | None = None,
    requires_ack: bool = False,
    ack_for: str | None = None,
) -> bytes: ...
def dump_payload(payload: Any) -> bytes: ...
def encode_ack(ack_for: str, timestamp: int, sender_addr: str | None = None) -> bytes: ...
def encode_bare(type: int, timestamp: int) -> bytes: ...
