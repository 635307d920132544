"""A tenant's throughput options, checked at deploy (dynamic batching:
max_batch and max_delay_us; requests in flight: max_inflight), and the
per-batch-size dispatch plans of a batching tenant."""

from __future__ import annotations

from dataclasses import dataclass

from vfpga.runtime.errors import DeployError


def check_throughput_options(kind: str, config: dict, max_batch, max_delay_us, max_inflight) -> None:
    """Refuses deploy options a tenant of ``kind`` ("cnn", "rnn", "mixed") on
    a board of ``config`` cannot have: dynamic batching (max_batch,
    max_delay_us) is built for RNN and CNN tenants and a mixed tenant's RNN
    part, requests in flight (max_inflight, up to the dispatcher's
    inflight_max) for CNN tenants and mixed tenants (a pipeline through both
    parts); a CNN tenant has one or the other. One check for a board's
    deploy and a cluster's."""
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise DeployError(f"max_batch must be a positive integer, not {max_batch!r}")
    if not isinstance(max_delay_us, (int, float)) or isinstance(max_delay_us, bool) or max_delay_us < 0:
        raise DeployError(f"max_delay_us must be a number >= 0, not {max_delay_us!r}")
    if max_batch > 1 and max_inflight != 1 and kind == "cnn":
        raise DeployError("a CNN tenant batches (max_batch) or keeps requests in flight (max_inflight), not "
                          "both: one batch is in flight at a time")
    if max_inflight != 1:
        limit = int(config["dispatcher"]["inflight_max"])
        if kind == "rnn":
            raise DeployError("max_inflight is implemented for CNN tenants and CNN + RNN models only (RNN "
                              "tenants batch: max_batch)")
        if not isinstance(max_inflight, int) or isinstance(max_inflight, bool) or not 1 <= max_inflight <= limit:
            raise DeployError(f"max_inflight must be 1..{limit} on {config['name']} for a CNN or CNN + RNN "
                              f"tenant, not {max_inflight!r}")

@dataclass
class SizedPlans:
    """A batching tenant's dispatch plans on k cores: one per batch size."""

    plans: dict  # batch size -> the kind's plan
    sizes: list

    @property
    def modeled_cycles(self) -> int:
        """One request alone (batch 1)."""
        return self.plans[1].modeled_cycles

    @property
    def k(self) -> int:
        return self.plans[1].k
