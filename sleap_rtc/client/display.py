"""A terminal progress display for the CLI (a progress sink, rich).

>>> import io
>>> from rich.console import Console
>>> from sleap_rtc.client.session import ProgressReceived
>>> from sleap_rtc_proto.v1 import progress_pb2 as p
>>> out = io.StringIO()
>>> display = TerminalProgress(console=Console(file=out, width=100, color_system=None))
>>> display.handle(ProgressReceived(p.JobProgress(event=p.PROGRESS_EVENT_EPOCH_END, epoch=0,
...     metrics={"train/loss": 0.5, "val/loss": 0.25})))
>>> print(out.getvalue().strip())
epoch 1: train/loss 0.5000  val/loss 0.2500
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from sleap_rtc.client.session import (
    Event,
    JobCompleted,
    JobFailedEvent,
    LogReceived,
    ProgressReceived,
)
from sleap_rtc_proto.v1 import progress_pb2


class TerminalProgress:
    """Prints training progress: one line per epoch, batch losses every ``batch_every``.

    Args:
        console: where to print (default stdout).
        batch_every: print every n-th batch_end (0: never).
        show_logs: also print the trainer's output lines.
        max_epochs: shown as "epoch 3/10" when known.
    """

    def __init__(
        self,
        *,
        console: Console | None = None,
        batch_every: int = 0,
        show_logs: bool = False,
        max_epochs: int | None = None,
    ) -> None:
        self.console = console or Console()
        self.batch_every = batch_every
        self.show_logs = show_logs
        self.max_epochs = max_epochs

    def _epoch(self, epoch: int) -> str:
        return f"{epoch + 1}/{self.max_epochs}" if self.max_epochs else str(epoch + 1)

    def handle(self, event: Event) -> None:
        c = self.console
        if isinstance(event, ProgressReceived):
            p = event.progress
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(p.metrics.items()))
            if p.event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN:
                c.print(f"Training started (job {escape(p.job_id)}).")
            elif p.event == progress_pb2.PROGRESS_EVENT_EPOCH_END:
                c.print(f"epoch {self._epoch(p.epoch)}: {metrics}".rstrip())
            elif (
                p.event == progress_pb2.PROGRESS_EVENT_BATCH_END
                and self.batch_every
                and p.batch % self.batch_every == 0
            ):
                c.print(f"  epoch {self._epoch(p.epoch)} batch {p.batch + 1}: {metrics}")
            elif p.event == progress_pb2.PROGRESS_EVENT_TRAIN_END:
                c.print("Training ended.")
        elif isinstance(event, LogReceived) and self.show_logs:
            for line in event.log.lines:
                c.print(f"[dim]{escape(line)}[/]")
        elif isinstance(event, JobCompleted):
            done = event.complete
            how = "stopped early" if done.stopped_early else "finished"
            c.print(
                f"[green]Job {escape(done.job_id)} {how}[/] in {done.duration_seconds:.1f} s; "
                f"outputs in {escape(done.run_dir)}"
            )
        elif isinstance(event, JobFailedEvent):
            failed = event.failed
            c.print(f"[red]Job {escape(failed.job_id)} failed:[/] {escape(failed.message)}")
            for line in failed.log_tail[-20:]:
                c.print(f"[dim]{escape(line)}[/]")
