"""Events stay few at scale: one SiloJobCreated per reconcile that launched, not one per silo
(1,000 silos would be 1,000 Events a round, past the apiserver's event rate limits)."""

from __future__ import annotations

from fedma_operator.act import created_message


def test_one_event_names_the_first_silos_and_counts_the_rest():
    started = [(f"silo-{i:04d}", 1) for i in range(999, -1, -1)]
    msg = created_message("t-r0001", started)
    assert msg.startswith("1000 silo Jobs created for round t-r0001: silo-0000 (attempt 1), ")
    assert msg.endswith("silo-0009 (attempt 1) (+990 more)") and len(msg) < 400, msg
    assert created_message("t-r0002", [("a", 2)]) == \
        "1 silo Job created for round t-r0002: a (attempt 2)"
