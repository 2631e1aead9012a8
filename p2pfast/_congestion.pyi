"""Types of the compiled congestion control (``_congestion.pyx``); twin: ``congestion``.

The classes are final (``_congestion.pxd``: Cython callers get direct C calls).
"""

from typing import final

K_INITIAL_WINDOW_PACKETS: int
K_INITIAL_WINDOW_BYTES: int
K_MINIMUM_WINDOW_PACKETS: int
K_LOSS_REDUCTION_FACTOR: float
K_PERSISTENT_CONGESTION_THRESHOLD: int
K_GRANULARITY: float
INITIAL_RTT: float
K_PACING_GAIN: float
K_MAX_UDP_PAYLOAD: int
INFINITE_SSTHRESH: int

@final
class RttEstimator:
    latest_rtt: float
    min_rtt: float
    smoothed_rtt: float
    rttvar: float
    has_sample: bool
    def __init__(self, initial_rtt: float = 0.1) -> None: ...
    def update(self, latest_rtt: float, ack_delay: float) -> None: ...
    def pto(self, max_ack_delay: float) -> float: ...
    def loss_delay(self) -> float: ...
    def persistent_congestion_duration(self, max_ack_delay: float) -> float: ...

@final
class NewReno:
    max_datagram_size: int
    congestion_window: int
    ssthresh: int
    bytes_in_flight: int
    recovery_start: float
    congestion_events: int
    in_flight_underflows: int
    def __init__(self, max_datagram_size: int) -> None: ...
    @property
    def minimum_window(self) -> int: ...
    def set_max_datagram_size(self, size: int) -> None: ...
    def available(self) -> int: ...
    def on_packet_sent(self, size: int) -> None: ...
    def on_packet_acked(self, size: int, sent_time: float, app_limited: bool = False) -> None: ...
    def on_packets_lost(
        self, lost_bytes: int, largest_lost_sent_time: float, now: float
    ) -> None: ...
    def on_persistent_congestion(self) -> None: ...
    def on_packet_discarded(self, size: int) -> None: ...

@final
class Pacer:
    max_datagram_size: int
    pacing_rate: float
    burst_size: float
    tokens: float
    def __init__(self, max_datagram_size: int) -> None: ...
    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None: ...
    def next_send_time(self, now: float) -> float: ...
    def on_packet_sent(self, size: int, now: float) -> None: ...
    def set_max_datagram_size(self, size: int) -> None: ...
