"""The figures the field reports for shared accelerators, defined once.

Work is counted from the model: MACs per request (2 ops per MAC), so
throughputs of different models add up only as operations per second, never
as requests. Per tenant and in aggregate:

* GOP/s: 2 * MACs per request * requests per second, summed over tenants;
* MAC utilisation: MACs achieved per cycle over the peak of the cores in use
  (``utilisation``) and of the whole device (``device_utilisation``);
* normalized progress NP_i = (tenant i's throughput shared) / (its
  throughput alone on the whole device of the same system) -- PREMA's
  definition for a tenant that always has its next request ready;
  STP = sum of NP_i, ANTT = mean of 1 / NP_i, fairness = min NP / max NP;
* latency percentiles of the closed-loop turnaround: from a tenant's
  previous result to this one (its next request is ready at once);
* SLO attainment: the share of requests whose latency is within the SLO.

Requests per second are reported per tenant only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfpga.runtime.compiler import placement, rnn, static


def model_macs(compiled) -> int:
    """MACs of one request of a compiled CNN or RNN model (the work the field counts)."""
    if isinstance(compiled, rnn.CompiledRnn):
        total = 0
        for layer in compiled.layers:
            gates = 4 if layer.op == "LSTM" else 3
            total += (layer.directions * layer.seq_steps * layer.seq_batch * gates * layer.hidden
                      * (layer.input_size + layer.hidden))
        return total
    if isinstance(compiled, static.CompiledModel):
        return int(placement.mac_share(compiled).total)  # the host's parts count too: it is the model's work
    raise TypeError(f"not a compiled model: {type(compiled).__name__}")


def peak_macs_per_cycle(config: dict, kind: str = "cnn") -> int:
    """MACs one core of ``kind`` performs per cycle at full occupancy."""
    if kind == "rnn":
        return int(config["rnn_core"]["rows"]) * int(config["rnn_core"]["cols"])
    return int(config["cnn_core"]["icp"]) * int(config["cnn_core"]["ocp"])


@dataclass
class TenantFigures:
    name: str
    model: str
    cores: int  # cores it held (0: the whole device, time-multiplexed)
    gmac: float  # per request
    req_per_s: float
    gops: float
    p50_ms: float
    p99_ms: float
    np_: float  # normalized progress

    def as_dict(self) -> dict:
        return {"tenant": self.name, "model": self.model, "cores": self.cores, "gmac": self.gmac,
                "req_per_s": self.req_per_s, "gops": self.gops, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "normalized_progress": self.np_}


def closed_loop_rate(ends_cycles, hz: float, horizon_cycles: int) -> float:
    """Steady-state requests per second of a closed-loop tenant from its
    completion times (its requests ready from cycle 0 on): (n - 1) / (last -
    first); with one completion, 1 / its time from cycle 0 (counting it over
    the whole horizon would charge the tenant for a request the horizon cut
    off); with none, 0."""
    ends = np.sort(np.asarray(ends_cycles, np.float64))
    if len(ends) >= 2 and ends[-1] > ends[0]:
        return (len(ends) - 1) / ((ends[-1] - ends[0]) / hz)
    if len(ends) and ends[-1] > 0:
        return len(ends) / (ends[-1] / hz)
    return len(ends) / (horizon_cycles / hz) if horizon_cycles else 0.0


def turnarounds_ms(ends_cycles, hz: float) -> np.ndarray:
    """Closed-loop turnaround of each request: from the previous result to this one."""
    ends = np.sort(np.asarray(ends_cycles, np.float64))
    return np.diff(np.concatenate([[0.0], ends])) / hz * 1e3


def system_figures(tenants: list[TenantFigures], peak_in_use: float, peak_device: float, hz: float) -> dict:
    """Aggregate figures of one system running ``tenants`` (peaks in MACs per cycle)."""
    gops = sum(t.gops for t in tenants)
    macs_per_s = gops / 2 * 1e9
    nps = [t.np_ for t in tenants]
    return {
        "gops": gops,
        "mac_utilization": macs_per_s / (peak_in_use * hz) if peak_in_use else 0.0,
        "device_mac_utilization": macs_per_s / (peak_device * hz) if peak_device else 0.0,
        "stp": float(sum(nps)),
        "antt": float(np.mean([1 / x for x in nps])) if nps and min(nps) > 0 else float("inf"),
        "fairness": float(min(nps) / max(nps)) if nps and max(nps) > 0 else 0.0,
        "tenants": [t.as_dict() for t in tenants],
    }
