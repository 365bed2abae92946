"""ResponseTracker: where does a server's response to one command end?

Baton forwards response bytes to the client as they arrive, so it must know, from packet
headers and a few payload bytes, when the response is complete and with which status flags
(in a transaction? more results coming?). The rules, in states (see ``_State``):

* A result starts with OK (0x00), ERR (0xFF), a LOCAL INFILE request (0xFB) or a column count.
* Column definitions follow, then an EOF packet unless CLIENT_DEPRECATE_EOF was negotiated.
* Rows follow until a terminator: 0xFE with a payload shorter than 0xFFFFFF is an EOF or (with
  DEPRECATE_EOF) an OK packet. A text row may also start with 0xFE (an 8-byte length prefix), but
  then its payload is at least 0xFFFFFF long (WL#7766). Binary rows start with 0x00. So the state
  and the length decide, never the byte alone. 0xFF in the row state is an ERR.
* SERVER_MORE_RESULTS_EXISTS in a terminator or OK means another result follows.
* A frame of exactly 0xFFFFFF bytes is continued by the next frame, whose bytes are payload.

Only packets that decide something are buffered (OK/ERR/EOF, column counts, prepare headers);
rows and column definitions are skipped by length. With ``collect=True`` every packet payload is
kept, for Baton's own queries (monitor, session restore).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from .constants import MAX_PAYLOAD, Capability, Command, ServerStatus
from .packets import ErrPacket, parse_err
from .wire import PayloadReader, ProtocolError

_MORE: Final = int(ServerStatus.MORE_RESULTS_EXISTS)
_CURSOR: Final = int(ServerStatus.CURSOR_EXISTS)
_STATE_CHANGED: Final = int(ServerStatus.SESSION_STATE_CHANGED)
_STMT_FETCH: Final = int(Command.STMT_FETCH)
_MAX: Final = MAX_PAYLOAD


def _ok_status(data: bytes, pos: int, end: int) -> int:
    """The status flags of the OK packet whose affected-rows field starts at data[pos]
    (the packet ends at ``end``); -1 if it is too short to hold them."""
    for _ in range(2):  # affected rows, last insert id: length-encoded integers
        if pos >= end:
            return -1
        b = data[pos]
        pos += 1 if b < 0xFB else (3 if b == 0xFC else 4 if b == 0xFD else 9)
    if pos + 2 > end:
        return -1
    return data[pos] | (data[pos + 1] << 8)


class _State(IntEnum):
    DONE = 0
    RESULT_START = 1  # OK / ERR / LOCAL INFILE / column count
    COLUMNS = 2  # column definitions, counted down
    COLUMNS_EOF = 3  # EOF after column definitions (no DEPRECATE_EOF)
    ROWS = 4  # rows until terminator or ERR
    SINGLE = 5  # one packet, whatever it is
    PREPARE_START = 6  # COM_STMT_PREPARE OK or ERR
    PREPARE_PARAMS = 7
    PREPARE_PARAMS_EOF = 8
    PREPARE_COLUMNS = 9
    PREPARE_COLUMNS_EOF = 10
    INFILE = 11  # waiting for the client to send the file
    FIELD_LIST = 12  # column definitions until terminator


# Plain ints for the hot path: enum attribute lookups cost more than the work itself.
_DONE: Final = int(_State.DONE)
_RESULT_START: Final = int(_State.RESULT_START)
_COLUMNS: Final = int(_State.COLUMNS)
_COLUMNS_EOF: Final = int(_State.COLUMNS_EOF)
_ROWS: Final = int(_State.ROWS)
_SINGLE: Final = int(_State.SINGLE)
_PREPARE_START: Final = int(_State.PREPARE_START)
_PREPARE_PARAMS: Final = int(_State.PREPARE_PARAMS)
_PREPARE_PARAMS_EOF: Final = int(_State.PREPARE_PARAMS_EOF)
_PREPARE_COLUMNS: Final = int(_State.PREPARE_COLUMNS)
_PREPARE_COLUMNS_EOF: Final = int(_State.PREPARE_COLUMNS_EOF)
_INFILE: Final = int(_State.INFILE)
_FIELD_LIST: Final = int(_State.FIELD_LIST)

# How each command's response begins.
_START_STATE: Final[dict[int, int]] = {
    Command.QUERY: _RESULT_START,
    Command.STMT_EXECUTE: _RESULT_START,
    Command.PROCESS_INFO: _RESULT_START,
    Command.STMT_PREPARE: _PREPARE_START,
    Command.STMT_FETCH: _ROWS,
    Command.FIELD_LIST: _FIELD_LIST,
    Command.STMT_CLOSE: _DONE,
    Command.STMT_SEND_LONG_DATA: _DONE,
    Command.QUIT: _DONE,
}


def expects_response(command: int) -> bool:
    return _START_STATE.get(command, _SINGLE) != _DONE


# ``ResponseTracker.state`` values its callers test on the hot path (the properties ``done``
# and ``awaiting_infile`` say the same, at the price of a call).
DONE: Final = _DONE
AWAITING_INFILE: Final = _INFILE


class ResponseTracker:
    """Feed it the bytes of one response; it says when the response ends. Sans-I/O."""

    __slots__ = (
        "deprecate_eof", "state", "status", "error", "collect", "packets", "state_oks",
        "prepare_ok", "_command", "_count", "_results", "_hdr", "_remaining", "_frame_len",
        "_peek", "_first", "_buffering", "_pkt", "_continued", "_params_left",
    )

    def __init__(self, capabilities: int) -> None:
        self.deprecate_eof = bool(capabilities & Capability.DEPRECATE_EOF)
        self.state = _DONE
        self.status = 0  # status flags of the last OK/EOF seen (kept across commands)
        self.error: ErrPacket | None = None
        self.collect = False
        self.packets: list[bytes] = []
        self.state_oks: list[bytes] = []  # OK payloads that carry session-state changes
        self.prepare_ok: bytes | None = None
        self._command = 0
        self._count = 0
        self._results = 0
        self._hdr = b""
        self._remaining = 0
        self._frame_len = 0
        self._peek = False
        self._first = 0
        self._buffering = False
        self._pkt = bytearray()
        self._continued = False
        self._params_left = 0

    @property
    def done(self) -> bool:
        return self.state == _DONE

    @property
    def awaiting_infile(self) -> bool:
        return self.state == _INFILE

    @property
    def results(self) -> int:
        """How many results (OK packets or result sets) the response has held so far."""
        return self._results

    def start(self, command: int, collect: bool = False) -> None:
        if self.state != _DONE:
            raise ProtocolError(f"previous response still open in state {_State(self.state).name}")
        self.state = _START_STATE.get(command, _SINGLE)
        self._command = command
        self.error = None
        self.collect = collect
        self.packets = []
        self.state_oks = []
        self.prepare_ok = None
        self._results = 0
        self._hdr = b""
        self._remaining = 0
        self._peek = False
        self._continued = False

    def reset(self) -> None:
        """Forget a half-read response (the connection it belonged to is being discarded)."""
        self.state = _DONE
        self._hdr = b""
        self._remaining = 0
        self._continued = False

    def infile_sent(self) -> None:
        """The client finished sending LOCAL INFILE data: an OK or ERR follows."""
        if self.state != _INFILE:
            raise ProtocolError("no LOCAL INFILE request is pending")
        self.state = _RESULT_START

    def feed(self, chunk: bytes | memoryview) -> int:
        """Consumes response bytes; returns how many belong to this response.

        Returns ``len(chunk)`` unless the response ended inside ``chunk``; bytes after the end are
        not this response's (a server never sends them unasked, so callers treat them as an error).
        """
        # Typed bytes from here on: compiled, indexing bytes is a C read; indexing a union of
        # bytes and memoryview is a generic call and a boxed int per byte (3.5% of the
        # process's samples on read/write, ``perf``). uvloop hands bytes; tests may not.
        data = chunk if isinstance(chunk, bytes) else bytes(chunk)
        n = len(data)
        pos = 0
        while pos < n:
            state = self.state
            if state == _DONE or state == _INFILE:
                return pos
            if not self._remaining and not self._hdr and not self._continued and pos + 4 < n:
                if not self.collect:
                    end = self._whole_packets(data, pos, n)
                    if end != pos:
                        pos = end
                        continue
                # Fast path: a whole packet inside this chunk (the usual case) is judged in
                # place, without buffering it byte by byte.
                length = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
                end = pos + 4 + length
                if length and end <= n and length != MAX_PAYLOAD:
                    first = data[pos + 4]
                    if state == _ROWS or state == _FIELD_LIST:
                        if (first == 0xFE and length < MAX_PAYLOAD) or first == 0xFF:
                            payload = bytes(data[pos + 4 : end])
                            if self.collect:
                                self.packets.append(payload)
                            self._packet(first, payload)
                        elif self.collect:
                            self.packets.append(bytes(data[pos + 4 : end]))
                    elif state == _COLUMNS:
                        if self.collect:
                            self.packets.append(bytes(data[pos + 4 : end]))
                        self._count -= 1
                        if self._count <= 0:
                            self.state = _ROWS if self.deprecate_eof else _COLUMNS_EOF
                    else:
                        payload = bytes(data[pos + 4 : end])
                        if self.collect:
                            self.packets.append(payload)
                        self._packet(first, payload)
                    pos = end
                    continue
            remaining = self._remaining
            if remaining:
                if self._peek:
                    self._peek = False
                    first = data[pos]
                    self._first = first
                    self._buffering = self.collect or self._wants(first, self._frame_len)
                    if self._buffering:
                        self._pkt = bytearray()
                take = remaining if remaining <= n - pos else n - pos
                if self._buffering:
                    self._pkt += data[pos : pos + take]
                pos += take
                remaining -= take
                self._remaining = remaining
                if not remaining:
                    self._frame_done()
                continue
            hdr = self._hdr
            if hdr or n - pos < 4:
                need = 4 - len(hdr)
                hdr += bytes(data[pos : pos + need])
                pos += min(need, n - pos)
                if len(hdr) < 4:
                    self._hdr = hdr
                    return n
                self._hdr = b""
                length = hdr[0] | (hdr[1] << 8) | (hdr[2] << 16)
            else:
                length = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
                pos += 4
            self._frame_len = length
            self._remaining = length
            if not self._continued:
                self._peek = True
            if not length:
                if self._peek:  # an empty packet: nothing to peek at
                    self._peek = False
                    self._first = -1
                    self._buffering = True
                    self._pkt = bytearray()
                self._frame_done()
        return pos

    # -- internals --------------------------------------------------------------------------

    def _whole_packets(self, data: bytes, pos: int, n: int) -> int:
        """The usual response, read in place: whole packets of a result set (column count,
        column definitions, EOFs, rows) or an OK without session-state changes, as long as
        they lie whole in ``data`` from ``pos``. Returns where it stopped: at the end of the
        response, of the data, or at a packet it leaves to the general reading (ERR, OK with
        session state, a frame of 16 MiB, DEPRECATE_EOF terminators...). Same outcome as
        ``_packet`` and ``_status_from``, without copying payloads or calling per packet."""
        state = self.state
        count = self._count
        eof = not self.deprecate_eof
        while pos + 4 < n:
            length = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
            end = pos + 4 + length
            if not length or end > n or length >= _MAX:
                break
            first = data[pos + 4]
            if state == _ROWS:
                if first != 0xFE and first != 0xFF:  # a row: skip it, and the rows after it
                    pos = end
                    while pos + 4 < n:
                        length = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
                        end = pos + 4 + length
                        first = data[pos + 4]
                        if not length or end > n or length >= _MAX or first == 0xFE or first == 0xFF:
                            break
                        pos = end
                    continue
                if first == 0xFF or not eof or not 5 <= length < 9:
                    break  # ERR, or a terminator to read in full
                status = data[pos + 7] | (data[pos + 8] << 8)  # the EOF ending the rows
                self.status = status
                self._results += 1
                if status & _MORE and self._command != _STMT_FETCH:
                    state = _RESULT_START
                else:
                    state = _DONE
                    pos = end
                    break
            elif state == _COLUMNS:
                count -= 1
                if count <= 0:
                    state = _COLUMNS_EOF if eof else _ROWS
            elif state == _RESULT_START:
                if 0 < first < 0xFB:  # a column count below 251 (one byte)
                    count = first
                    state = _COLUMNS
                elif first == 0x00:
                    status = _ok_status(data, pos + 5, end)
                    if status < 0 or status & _STATE_CHANGED:
                        break
                    self.status = status
                    self._results += 1
                    if not status & _MORE:
                        state = _DONE
                        pos = end
                        break
                else:
                    break
            elif state == _COLUMNS_EOF:
                if first != 0xFE or not 5 <= length < 9:
                    break
                status = data[pos + 7] | (data[pos + 8] << 8)
                self.status = status
                if status & _CURSOR:
                    self._results += 1
                    state = _DONE
                    pos = end
                    break
                state = _ROWS
            else:
                break
            pos = end
        self.state = state
        self._count = count
        return pos

    def _wants(self, first: int, length: int) -> bool:
        """Must this packet be buffered to decide what comes next?"""
        state = self.state
        if state == _ROWS or state == _FIELD_LIST:
            return (first == 0xFE and length < MAX_PAYLOAD) or first == 0xFF
        return not (
            state == _COLUMNS
            or state == _PREPARE_PARAMS
            or state == _PREPARE_COLUMNS
        )

    def _frame_done(self) -> None:
        if self._frame_len == MAX_PAYLOAD:
            self._continued = True  # the next frame carries more of this packet
            return
        self._continued = False
        payload: bytes | None = None
        if self._buffering:
            payload = bytes(self._pkt)
            self._pkt = bytearray()
            if self.collect:
                self.packets.append(payload)
        self._packet(self._first, payload)

    def _packet(self, first: int, payload: bytes | None) -> None:
        state = self.state
        if state == _ROWS or state == _FIELD_LIST:
            if payload is None or not self._is_terminator(first, payload):
                return  # a row / column definition
            if first == 0xFF:
                self._fail(payload)
                return
            self._status_from(payload)
            self._results += 1
            if self.status & _MORE and state == _ROWS and self._command != Command.STMT_FETCH:
                self.state = _RESULT_START
            else:
                self.state = _DONE
        elif state == _COLUMNS:
            self._count -= 1
            if self._count <= 0:
                self.state = _ROWS if self.deprecate_eof else _COLUMNS_EOF
        elif state == _RESULT_START:
            assert payload is not None
            if first == 0x00:
                self._results += 1
                self._status_from(payload)
                self.state = _RESULT_START if self.status & _MORE else _DONE
            elif first == 0xFF:
                self._fail(payload)
            elif first == 0xFB:
                self.state = _INFILE
            elif first < 0:
                raise ProtocolError("empty packet where a result was expected")
            else:
                count = first if first < 0xFB else PayloadReader(payload).lenenc_int()
                if not count:
                    raise ProtocolError("result set with no columns")
                self._count = count
                self.state = _COLUMNS
        elif state == _COLUMNS_EOF:
            assert payload is not None
            if first == 0xFF:
                self._fail(payload)
                return
            self._status_from(payload)
            if self.status & _CURSOR:  # COM_STMT_EXECUTE opened a cursor: rows come by FETCH
                self._results += 1
                self.state = _DONE
            else:
                self.state = _ROWS
        elif state == _SINGLE:
            if payload is not None and first in (0x00, 0xFE) and len(payload) >= 5:
                if first == 0x00 or len(payload) < 9:
                    self._status_from(payload)
            elif first == 0xFF and payload is not None:
                self._fail(payload)
                return
            self._results += 1
            self.state = _DONE
        elif state == _PREPARE_START:
            assert payload is not None
            if first == 0xFF:
                self._fail(payload)
                return
            if first != 0x00 or len(payload) < 12:
                raise ProtocolError("malformed COM_STMT_PREPARE response")
            self.prepare_ok = payload
            self._results += 1
            columns = payload[5] | (payload[6] << 8)
            params = payload[7] | (payload[8] << 8)
            self._count = columns  # remembered for after the parameters
            if params:
                self._count_params(params, columns)
            else:
                self._after_params(columns)
        elif state == _PREPARE_PARAMS:
            self._params_left -= 1
            if self._params_left <= 0:
                if self.deprecate_eof:
                    self._after_params(self._count)
                else:
                    self.state = _PREPARE_PARAMS_EOF
        elif state == _PREPARE_PARAMS_EOF:
            self._after_params(self._count)
        elif state == _PREPARE_COLUMNS:
            self._count -= 1
            if self._count <= 0:
                self.state = _DONE if self.deprecate_eof else _PREPARE_COLUMNS_EOF
        elif state == _PREPARE_COLUMNS_EOF:
            self.state = _DONE
        else:
            raise ProtocolError(f"unexpected packet in state {_State(state).name}")

    def _count_params(self, params: int, columns: int) -> None:
        self._params_left = params
        self.state = _PREPARE_PARAMS

    def _after_params(self, columns: int) -> None:
        if columns:
            self._count = columns
            self.state = _PREPARE_COLUMNS
        else:
            self.state = _DONE

    @staticmethod
    def _is_terminator(first: int, payload: bytes) -> bool:
        return first == 0xFF or (first == 0xFE and len(payload) < MAX_PAYLOAD)

    def _status_from(self, payload: bytes) -> None:
        if not payload:
            raise ProtocolError("empty packet where an OK or EOF was expected")
        first = payload[0]
        if first == 0xFE and len(payload) < 9 and not self.deprecate_eof:
            if len(payload) >= 5:
                self.status = payload[3] | (payload[4] << 8)
            return
        # OK packet (0x00, or 0xFE under DEPRECATE_EOF): header, two lenenc ints, status
        status = _ok_status(payload, 1, len(payload))
        if status < 0:
            raise ProtocolError("OK packet truncated before its status flags")
        self.status = status
        if status & _STATE_CHANGED:
            self.state_oks.append(payload)

    def _fail(self, payload: bytes) -> None:
        self.error = parse_err(payload)
        self.state = _DONE
        # An ERR ends the whole response: the MORE_RESULTS_EXISTS of an earlier result's
        # terminator must not outlive it (callers reuse ``status`` in OK packets they make).
        self.status &= ~_MORE
