"""The front end's errors: a model the accelerator path cannot take as it is."""

from __future__ import annotations


class FrontendError(ValueError):
    """The model cannot be taken by the accelerator path as it is."""


class UnsupportedOperatorError(FrontendError):
    """An operator (or an attribute of it) the accelerator does not have.

    Carries op_type/node_name/reason so a partitioner can catch it and cut the
    node out into a CPU subgraph instead."""

    def __init__(self, op_type: str, node_name: str, reason: str = ""):
        self.op_type, self.node_name, self.reason = op_type, node_name, reason
        msg = f"operator {op_type} (node '{node_name}') is not supported by the accelerator"
        super().__init__(msg + (f": {reason}" if reason else ""))
