"""Completion records as the driver decodes them (Completion.decode), against
the record's layout in the ISA header read through numpy's structured dtype."""

import dataclasses

import numpy as np
import pytest

from vfpga.driver import isa
from vfpga.driver.tenant_context import NO_CORE, Completion

# Completion fields that are not record fields, or are record fields decoded
NOT_COPIED = {"seq", "status", "fault_core", "collected_at", "posted_at"}


def _record(**values) -> bytes:
    rec = np.zeros(1, isa.COMPLETION)
    for i, name in enumerate(isa.COMPLETION.names):  # every field a value of its own
        rec[name] = values.get(name, 1000 + 17 * i)
    return rec.tobytes()


@pytest.mark.parametrize("status", sorted(isa.RECORD_STATUS))
def test_every_field_is_the_records(status):
    data = _record(status=status, fault_core=3)
    c = Completion.decode(isa.COMPLETION_STRUCT.unpack_from(data), 41, 2.5, 1.5)
    rec = np.frombuffer(data, isa.COMPLETION)[0]
    for f in dataclasses.fields(Completion):
        if f.name not in NOT_COPIED:
            assert getattr(c, f.name) == int(rec[f.name]), f.name
    assert (c.seq, c.status, c.fault_core, c.collected_at, c.posted_at) == (41, isa.RECORD_STATUS[status], 3, 2.5, 1.5)
    assert c.ok == (isa.RECORD_STATUS[status] == "OK")


def test_no_core_and_an_unknown_status():
    unknown = max(isa.RECORD_STATUS) + 1
    c = Completion.decode(isa.COMPLETION_STRUCT.unpack_from(_record(status=unknown, fault_core=NO_CORE)), 0, 0.0, None)
    assert c.fault_core is None and c.status == f"UNKNOWN({unknown})" and not c.ok


def test_a_decoded_record_is_frozen_and_compares_without_its_host_times():
    raw = isa.COMPLETION_STRUCT.unpack_from(_record())
    a, b = Completion.decode(raw, 1, 1.0, None), Completion.decode(raw, 1, 2.0, 0.5)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.cycles = 0
