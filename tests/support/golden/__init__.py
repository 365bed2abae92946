"""Golden packets: a real MariaDB's exact bytes, captured by ``capture.py`` into mariadb.json.

``mariadb.json`` holds, per capability variant ("deprecate_eof" and "eof"), the capabilities the
capture logged in with and, for each command, the request sent and the framed response bytes
received, as hex. The 17 MiB row is stored as run-length segments (``decode_runs``) and checked
against its SHA-256 on load. ``logins`` holds greetings, login replies, an auth switch and
access-denied errors.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA = Path(__file__).with_name("mariadb.json")

VARIANTS = ("deprecate_eof", "eof")


def encode_runs(data: bytes, min_run: int = 256) -> list[list[object]]:
    """Run-length segments: ["hex", text] for literal bytes, ["run", byte, count] for runs."""
    out: list[list[object]] = []
    pos = 0
    for match in re.finditer(rb"(.)\1{%d,}" % (min_run - 1), data, re.DOTALL):
        if match.start() > pos:
            out.append(["hex", data[pos : match.start()].hex()])
        out.append(["run", match.group(1)[0], match.end() - match.start()])
        pos = match.end()
    if pos < len(data):
        out.append(["hex", data[pos:].hex()])
    return out


def decode_runs(segments: list[list[object]]) -> bytes:
    parts = []
    for kind, *rest in segments:
        if kind == "hex":
            parts.append(bytes.fromhex(str(rest[0])))
        else:
            parts.append(bytes((int(str(rest[0])),)) * int(str(rest[1])))
    return b"".join(parts)


@dataclass(frozen=True)
class GoldenResponse:
    variant: str
    name: str
    command: str  # a proxy.protocol.constants.Command member name
    capabilities: int  # what the capturing client logged in with
    request: bytes  # command byte + body
    response: bytes  # framed, exactly as received
    after_infile: bytes | None  # the reply once LOCAL INFILE data was sent
    note: str


@cache
def load() -> dict[str, object]:
    return json.loads(DATA.read_text())  # type: ignore[no-any-return]


@cache
def _response_bytes(variant: str, name: str) -> bytes:
    entry = _entry(variant, name)
    if "response_runs" in entry:
        data = decode_runs(entry["response_runs"])
        if hashlib.sha256(data).hexdigest() != entry["response_sha256"]:
            raise ValueError(f"golden {variant}/{name} does not match its recorded SHA-256")
        return data
    return bytes.fromhex(entry["response"])


def _entry(variant: str, name: str) -> dict:  # type: ignore[type-arg]
    for entry in load()["variants"][variant]["responses"]:  # type: ignore[index]
        if entry["name"] == name:
            return entry  # type: ignore[no-any-return]
    raise KeyError(f"no golden response {variant}/{name}")


def names(*, include_big: bool = False) -> list[str]:
    """Capture names, the same in every variant."""
    entries = load()["variants"][VARIANTS[0]]["responses"]  # type: ignore[index]
    return [e["name"] for e in entries if include_big or "response_runs" not in e]


def response(variant: str, name: str) -> GoldenResponse:
    entry = _entry(variant, name)
    after = entry.get("after_infile")
    return GoldenResponse(
        variant=variant,
        name=name,
        command=entry["command"],
        capabilities=int(load()["variants"][variant]["capabilities"]),  # type: ignore[index]
        request=bytes.fromhex(entry["request"]),
        response=_response_bytes(variant, name),
        after_infile=bytes.fromhex(after) if after is not None else None,
        note=entry["note"],
    )


def login(kind: str) -> dict[str, object]:
    """One login exchange (greeting, requests and replies as framed bytes) by kind."""
    raw = load()["logins"][kind]  # type: ignore[index]
    out: dict[str, object] = dict(raw)
    for key in ("greeting",):
        out[key] = bytes.fromhex(raw[key])
    for key in ("requests", "replies"):
        out[key] = [bytes.fromhex(x) for x in raw[key]]
    return out


def split_frames(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, length, seq) of each frame: the layout alone, no protocol knowledge."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "little")
        out.append((pos, length, data[pos + 3]))
        pos += 4 + length
    if pos != len(data):
        raise ValueError("golden data does not end on a frame boundary")
    return out
