"""Byte streams Arrow's CSV reader reads through: the bytes before a trailer line, and
text whose delimiter of several characters is rewritten to one (0x1F) while it streams."""

from __future__ import annotations

import codecs
import io
from pathlib import Path

# What a delimiter of several characters is rewritten to before Arrow splits the text.
MULTI_DELIMITER = "\x1f"


class _Head(io.RawIOBase):
    """The first `limit` bytes of a file (what comes before a trailer line; -1: all)."""

    def __init__(self, path: Path, limit: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed with this stream
        self._left = limit if limit >= 0 else 1 << 62

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # io.BufferedReader, its one reader, passes a memoryview
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._fh.readinto(memoryview(buffer)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._fh.close()
        super().close()


class _Redelimit(io.RawIOBase):
    """Text in `codec` with a delimiter of several characters, as UTF-8 with 0x1F in its
    place, streamed (a delimiter split across two reads is held back until whole)."""

    def __init__(self, source: io.BufferedReader, codec: str, delimiter: str) -> None:
        self._src = source
        self._decoder = codecs.getincrementaldecoder(codec)()
        self._delimiter = delimiter
        self._carry = ""
        self._out = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # io.BufferedReader, its one reader, passes a memoryview
        while not self._out and not self._done:
            chunk = self._src.read(1 << 20)
            text = (self._carry + self._decoder.decode(chunk, final=not chunk)).replace(
                self._delimiter, MULTI_DELIMITER
            )
            self._carry = ""
            if chunk:  # hold back an end that may be the start of a delimiter
                for k in range(len(self._delimiter) - 1, 0, -1):
                    if text.endswith(self._delimiter[:k]):
                        text, self._carry = text[:-k], text[-k:]
                        break
            else:
                self._done = True
            self._out = text.encode("utf-8")
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._src.close()
        super().close()
