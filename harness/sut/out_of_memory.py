"""Out-of-memory errors that say what to lower.

Out of memory (``backends.base.is_out_of_memory``) from ``predict`` becomes
:class:`DeviceMemoryError`, whose message names the batch size that failed and the setting that lowers it. The
pipeline then retries the batch one image at a time, so the run goes on;
``oom_batches`` counts the batches that failed this way for the run summary.
"""
from __future__ import annotations


class DeviceMemoryError(RuntimeError):
    """The device ran out of memory on a batch; the message says which setting to lower."""


def batch_hint(scenario: str, batch_size: int, server_max_batch: int) -> str:
    """Which setting lowers the batch of ``scenario``, with its current value."""
    if scenario == "Offline":
        return f"lower --batch-size (now {batch_size})"
    if scenario == "Server":
        return f"lower --server-max-batch (now {server_max_batch})"
    if scenario == "MultiStream":
        return ("a MultiStream query (its samples_per_query, fixed by the rules) runs as one batch: use a "
                "lower precision, smaller --image-size or a device with more memory")
    return "even one image does not fit: use a lower precision, smaller --image-size or a device with more memory"
