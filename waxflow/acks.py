"""Share-group ack rules (G4): how a delivered record is acknowledged, given its outcome.

One pure function, so the source that sends the acks, the execution documents and the tests
all agree on the rule:

- **ACCEPT** when the execution ended SUCCESS or WARNING, and for records that had no
  execution because ``headerFilters`` filtered them out (``execution_state`` None);
- **RELEASE** when the execution FAILED (or did not reach a terminal state) and this was
  not yet the last allowed delivery (``delivery_count < max_deliveries``): the broker
  delivers it again, possibly to another consumer;
- **REJECT** when the record is poison (it did not deserialize, execution SKIPPED) or a
  failure happened at the last allowed delivery: the broker archives it, never delivers it
  again.
"""

from __future__ import annotations

from typing import Literal

AckType = Literal["ACCEPT", "RELEASE", "REJECT"]
ACK_TYPES: tuple[AckType, ...] = ("ACCEPT", "RELEASE", "REJECT")

_DONE = frozenset({"SUCCESS", "WARNING"})


def decide(execution_state: str | None, serde_error: bool, delivery_count: int,
           max_deliveries: int) -> AckType:
    """The ack for one delivery of a record.

    ``execution_state`` is the execution's terminal state, or None when the record was
    filtered (no execution); ``serde_error`` says the record did not deserialize;
    ``delivery_count`` is the broker's count for this delivery (1 for the first);
    ``max_deliveries`` is the delivery at which a failure is final (>= 1).
    """
    if max_deliveries < 1:
        raise ValueError(f"max_deliveries must be >= 1 (got {max_deliveries})")
    if serde_error or execution_state == "SKIPPED":
        return "REJECT"
    if execution_state is None or execution_state in _DONE:
        return "ACCEPT"
    return "RELEASE" if delivery_count < max_deliveries else "REJECT"
