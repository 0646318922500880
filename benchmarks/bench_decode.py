"""Records per second: fast_decode against psrpcore's deserialize + event + record_from_event.

Run with ``python benchmarks/bench_decode.py [N [ROUNDS]]``. The messages are the bodies psrpcore's
own server writes (a DSC-like verbose line, a warning, an information record, a progress record,
an ErrorRecord and a string of output); both sides decode exactly the same bytes, and the
slow side does what psrpcore's ``RunspacePool._process_message`` does before an event exists.
Rounds alternate the two sides (ours over N messages, psrpcore over N/20); each rate is the
median of its rounds, printed with the spread of the ratio per round.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any
from xml.etree import ElementTree

import psrpcore
from psrpcore.types import ErrorCategory, ErrorCategoryInfo, NETException, PSRPMessageType

from vmbusops.psrp.convert import record_from_event
from vmbusops.psrp.decode import fast_decode
from vmbusops.records import Record

Message = tuple[PSRPMessageType, bytes]


def sample_messages() -> dict[str, Message]:
    """One message body per kind, as psrpcore's server writes them."""
    client = psrpcore.ClientRunspacePool()
    server = psrpcore.ServerRunspacePool()
    client.open()
    server.receive_data(client.data_to_send())  # type: ignore[arg-type]
    server.next_event()
    server.next_event()
    client.receive_data(server.data_to_send())  # type: ignore[arg-type]
    while client.next_event() is not None:
        pass
    ps = psrpcore.ClientPowerShell(client)
    ps.add_script("Start-DscConfiguration")
    ps.start()
    pipe = psrpcore.ServerPipeline(server, ps.pipeline_id)
    server.receive_data(client.data_to_send())  # type: ignore[arg-type]
    server.next_event()
    pipe.start()
    server._send_buffer.clear()

    pipe.write_verbose("[WIN-GUEST01]: LCM:  [ End    Test     ]  [[File]DirectoryCopy]  in 0.0620 seconds.")
    pipe.write_warning("[WIN-GUEST01]: The configuration is not in the desired state.")
    pipe.write_information("Copying C:\\Temp\\payload.zip", "Expand-Archive", tags=["PSHOST"])
    pipe.write_progress("Copying files", 1, "37 of 120", current_operation="payload.zip", percent_complete=30)
    pipe.write_error(
        NETException("Cannot find path 'C:\\missing' because it does not exist."),
        ErrorCategoryInfo(
            Category=ErrorCategory.ObjectNotFound,
            Activity="Get-Item",
            Reason="ItemNotFoundException",
            TargetName="C:\\missing",
            TargetType="String",
        ),
        target_object="C:\\missing",
        fully_qualified_error_id="PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand",
    )
    pipe.write_output("C:\\Windows\\Temp\\dsc\\localhost.mof")

    names = ["verbose", "warning", "information", "progress", "error", "output string"]
    messages: dict[str, Message] = {}
    for name, queued in zip(names, server._send_buffer, strict=True):
        raw = psrpcore._payload.unpack_message(bytearray(bytes(queued.data)))
        messages[name] = (raw.message_type, bytes(raw.data))
    return messages


def psrpcore_path(
    message_type: PSRPMessageType, data: bytes, cipher: Any, pool_id: uuid.UUID
) -> Record | None:
    # Exactly what psrpcore's RunspacePool._process_message does before an event exists.
    obj = psrpcore.types.deserialize(ElementTree.fromstring(data), cipher=cipher)
    return record_from_event(psrpcore.PSRPEvent.create(message_type, obj, pool_id, pool_id))


def seconds(decode: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        decode()
    return time.perf_counter() - start


def interleaved_rates(
    fast: Callable[[], object], n_fast: int, slow: Callable[[], object], n_slow: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Records per second of each side per round, rounds run fast, slow, fast, slow, ..."""
    fast_rates: list[float] = []
    slow_rates: list[float] = []
    for _ in range(rounds):
        fast_rates.append(n_fast / seconds(fast, n_fast))
        slow_rates.append(n_slow / seconds(slow, n_slow))
    return fast_rates, slow_rates


def main(n: int = 20_000, rounds: int = 5) -> None:
    cipher = psrpcore.PSRemotingCrypto()
    pool_id = uuid.uuid4()
    print(f"medians of {rounds} interleaved rounds (fast, psrpcore, fast, ...)")
    print(f"{'message':<16}{'bytes':>7}{'fast rec/s':>14}{'psrpcore rec/s':>16}{'ratio':>8}  per round")
    for name, (message_type, data) in sample_messages().items():
        fast = fast_decode(message_type, data)
        assert fast is not None, name
        assert fast == psrpcore_path(message_type, data, cipher, pool_id), name
        fast_rates, slow_rates = interleaved_rates(
            partial(fast_decode, message_type, data),
            n,
            partial(psrpcore_path, message_type, data, cipher, pool_id),
            max(n // 20, 200),
            rounds,
        )
        fast_rate, slow_rate = statistics.median(fast_rates), statistics.median(slow_rates)
        per_round = [f / s for f, s in zip(fast_rates, slow_rates, strict=True)]
        print(
            f"{name:<16}{len(data):>7}{fast_rate:>14,.0f}{slow_rate:>16,.0f}{fast_rate / slow_rate:>7.1f}x"
            f"  {min(per_round):.1f}x-{max(per_round):.1f}x"
        )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
