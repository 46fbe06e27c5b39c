"""Stopping at a step boundary: SIGTERM and SIGINT (how SLURM, Kubernetes and Ctrl-C end a job) are
turned into a request that the loop honours after the current step, once the checkpoint is written.
A second SIGINT stops at once, as Python does by default."""

import signal

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self):
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number, _frame) -> None:
        if self.signal == signal.SIGINT and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = number

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


def any_process(flags: list[bool], context) -> list[bool]:
    """Each flag True on every process when it is True on any (one all-reduce for all): the ranks must
    stop at the same step, or the collective checkpoint would wait forever on the ones that went on."""
    if not context.enabled:
        return list(flags)
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=context.device)
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]
