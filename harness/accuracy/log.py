"""Reading LoadGen's ``mlperf_log_accuracy.json`` one entry at a time.

Accuracy logs can be far larger than memory (a compliance run's log reached
5 GB upstream), so nothing here loads a whole log: :class:`AccuracyLogReader`
reads the file in chunks and decodes one ``{seq_id, qsl_idx, data}`` object
at a time, keeping at most one chunk plus one entry in memory.

Assumptions: the log is a JSON list of objects (LoadGen writes one object
per line, but any whitespace is accepted). A log cut short mid-write (an
interrupted run) yields its complete entries and sets ``truncated``; anything
else that is not such a list is an :class:`~harness.coco_eval.AccuracyError`
naming the file and the byte offset.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from harness.accuracy.coco import AccuracyError

CHUNK_CHARS = 1 << 20
MAX_ENTRY_CHARS = 64 << 20   # an entry this long without closing is a damaged file, not a big detection list
_WS = " \t\r\n"


class AccuracyLogReader:
    """Iterate the entries of one accuracy log; after iteration ``count`` and ``truncated`` are set."""

    def __init__(self, path: str | Path, chunk_chars: int = CHUNK_CHARS) -> None:
        self.path = Path(path)
        self.chunk_chars = chunk_chars
        self.count = 0
        self.truncated = False

    @property
    def note(self) -> str | None:
        """A line describing a repair, or None."""
        if not self.truncated:
            return None
        return f"the accuracy log was truncated (interrupted run?): read its {self.count} complete entries"

    def __iter__(self) -> Iterator[dict]:
        try:
            f = self.path.open("r", encoding="utf-8", errors="strict")
        except OSError as e:
            raise AccuracyError(f"cannot read accuracy log {self.path}: {e.strerror}") from None
        with f:
            yield from self._entries(f)

    def _entries(self, f) -> Iterator[dict]:
        decoder = json.JSONDecoder()
        buf, pos, offset, eof = "", 0, 0, False   # offset = file position of buf[0], for messages

        def more() -> bool:
            nonlocal buf, pos, offset, eof
            if eof:
                return False
            try:
                chunk = f.read(self.chunk_chars)
            except UnicodeDecodeError:
                raise AccuracyError(f"{self.path} is not a LoadGen accuracy log (not UTF-8 text)") from None
            if not chunk:
                eof = True
                return False
            offset += pos
            buf, pos = buf[pos:] + chunk, 0
            return True

        def skip(chars: str) -> str | None:
            """Advance past ``chars``; the next character, or None at the end of the file."""
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in chars:
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return None

        first = skip(_WS)
        if first != "[":
            what = "it is empty" if first is None else f"it starts with {first!r}, not '['"
            raise AccuracyError(f"{self.path} is not a LoadGen accuracy log ({what}); expected a JSON list of "
                                "{seq_id, qsl_idx, data} entries")
        pos += 1
        while True:
            c = skip(_WS + ",")
            if c is None:
                self.truncated = True      # no closing ']': the writer stopped mid-file
                return
            if c == "]":
                return
            while True:
                try:
                    entry, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if len(buf) - pos > MAX_ENTRY_CHARS or (not more() and not self._cut_short(buf, pos)):
                        raise AccuracyError(f"{self.path} is not a LoadGen accuracy log (invalid JSON at byte "
                                            f"{offset + e.pos}: {e.msg})") from None
                    if eof:
                        self.truncated = True
                        return
            if not isinstance(entry, dict):
                raise AccuracyError(f"{self.path}: entry {self.count} is {type(entry).__name__}, expected an "
                                    "object {seq_id, qsl_idx, data}")
            pos = end
            self.count += 1
            yield entry

    @staticmethod
    def _cut_short(buf: str, pos: int) -> bool:
        """True when the text from ``pos`` is an object the file ended in the middle of."""
        return buf[pos] == "{" and "}" not in buf[pos:]
