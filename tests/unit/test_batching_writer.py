"""A closing batching writer (the lead recorder's) cannot be held by a failing store."""

from __future__ import annotations

import logging
import time

from serving.log_writer import BatchingWriter


class _AlwaysFails(BatchingWriter):
    what = "item"
    logger = logging.getLogger("test.batching_writer")

    def _store(self, batch: list[object]) -> None:
        raise OSError(28, "No space left on device")


def test_close_gives_up_a_failing_write_after_the_drain() -> None:
    writer = _AlwaysFails()
    writer._enqueue([1, 2, 3])
    started = time.monotonic()
    writer.close(drain_seconds=0.5)
    assert time.monotonic() - started < 5.0  # retried forever before: a stop hung
    assert writer.dropped == 3 and writer.pending == 0
