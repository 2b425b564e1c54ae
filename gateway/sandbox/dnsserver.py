"""A small authoritative DNS server on loopback for tests, benchmarks and the demo.

It answers from an in-memory table, over UDP and TCP on the same address, so the gateway's
real resolver code (dnspython, including truncation and TCP retry) runs against it unchanged.
It knows no zones: every name it holds is authoritative, names above stored names exist as
empty non-terminals (RFC 8020), CNAMEs inside the table are followed, and negative answers
carry an SOA so resolvers can cache them (the stored SOA of an ancestor, or a made-up one
whose minimum is the server TTL).

TXT values may be given bare (``v=spf1 -all``); they are quoted and split into 255-byte
strings for you, because unquoted zone syntax would split them at spaces.

CLI: ``python -m gateway.sandbox.dnsserver --listen 127.0.0.53:5353 --zone zone.toml`` where
the TOML file holds ``[[record]]`` tables with ``name``, ``type`` and ``value`` (a string or a
list of strings).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import signal
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rrset

from gateway.config.units import parse_host_port

_log = logging.getLogger(__name__)

Records = Mapping[tuple[str, str], Sequence[str]]
_Key = tuple[dns.name.Name, dns.rdatatype.RdataType]

MAX_CNAME_CHAIN = 8
UDP_PLAIN_LIMIT = 512
OUR_EDNS_PAYLOAD = 4096
TCP_PORT_ATTEMPTS = 5


def _to_name(text: str) -> dns.name.Name:
    """Names are absolute whether or not the caller wrote the final dot."""
    return dns.name.from_text(text, origin=dns.name.root)


def _quote_txt(value: str) -> str:
    """Turn a bare TXT value into quoted 255-byte character-strings."""
    if value.startswith('"'):
        return value
    raw = value.encode()
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    escaped = (c.decode().replace("\\", "\\\\").replace('"', '\\"') for c in chunks)
    return " ".join(f'"{chunk}"' for chunk in escaped)


def _parse_rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    if rdtype == dns.rdatatype.TXT:
        text = _quote_txt(text)
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False
    )


class LoopbackDnsServer:
    """Authoritative in-memory DNS over UDP and TCP on one loopback host:port.

    ``queries`` keeps the last questions as (transport, name, type) so tests can see whether
    a lookup reached the server (caching) and whether it came over TCP (truncation).
    """

    def __init__(
        self,
        records: Records | None = None,
        host: str = "127.0.0.53",
        port: int = 0,
        ttl: int = 60,
    ) -> None:
        self.host = host
        self.port = port
        self.ttl = ttl
        self.queries: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=10_000)
        self._data: dict[_Key, list[dns.rdata.Rdata]] = {}
        self._failing: set[dns.name.Name] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
        for (name, rdtype), values in (records or {}).items():
            for value in values:
                self.add(name, rdtype, value)

    # -- the table -------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, rdata: str) -> None:
        """Add one record; a parse error is raised here, not at query time."""
        kind = dns.rdatatype.from_text(rdtype)
        record = _parse_rdata(kind, rdata)
        values = self._data.setdefault((_to_name(name), kind), [])
        if record not in values:
            values.append(record)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove the records of one type, or the whole name (and its failure) without a type."""
        owner = _to_name(name)
        if rdtype is not None:
            self._data.pop((owner, dns.rdatatype.from_text(rdtype)), None)
            return
        self._failing.discard(owner)
        for key in [key for key in self._data if key[0] == owner]:
            del self._data[key]

    def fail(self, name: str, failing: bool = True) -> None:
        """Answer SERVFAIL for ``name`` (any type) until called again with ``failing=False``."""
        owner = _to_name(name)
        if failing:
            self._failing.add(owner)
        else:
            self._failing.discard(owner)

    # -- answering ---------------------------------------------------------------------------

    def handle(self, wire: bytes, transport: str) -> bytes | None:
        """Answer one query in wire format; None when it cannot even be parsed."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query, our_payload=OUR_EDNS_PAYLOAD)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            question = query.question[0]
            self.queries.append((transport, question.name.to_text(), question.rdtype.name))
            try:
                self._answer(response, question.name, question.rdtype)
            except Exception:  # a bad table entry must not leave the client waiting
                _log.exception("cannot answer %s", question)
                response.answer.clear()
                response.authority.clear()
                response.set_rcode(dns.rcode.SERVFAIL)
        return self._to_wire(query, response, transport)

    def _to_wire(
        self, query: dns.message.Message, response: dns.message.Message, transport: str
    ) -> bytes:
        """Serialize within the client's UDP limit; when it does not fit send TC and no data."""
        limit = 65535
        if transport == "udp":
            limit = max(UDP_PLAIN_LIMIT, query.payload) if query.edns >= 0 else UDP_PLAIN_LIMIT
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query, our_payload=OUR_EDNS_PAYLOAD)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire(max_size=limit)

    def _answer(
        self, response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> None:
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            if name in self._failing:
                response.answer.clear()
                response.set_rcode(dns.rcode.SERVFAIL)
                return
            if self._add_rrsets(response, name, qtype):
                return
            cname = self._data.get((name, dns.rdatatype.CNAME))
            if not cname or qtype in (dns.rdatatype.CNAME, dns.rdatatype.ANY):
                break
            response.answer.append(self._rrset(name, dns.rdatatype.CNAME, cname))
            name = cast(dns.rdtypes.ANY.CNAME.CNAME, cname[0]).target
        if not self._exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._soa(name))

    def _add_rrsets(
        self, response: dns.message.Message, name: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> bool:
        found = [
            (kind, rdatas)
            for (owner, kind), rdatas in self._data.items()
            if owner == name and rdatas and (kind == qtype or qtype == dns.rdatatype.ANY)
        ]
        for kind, rdatas in found:
            response.answer.append(self._rrset(name, kind, rdatas))
        return bool(found)

    def _exists(self, name: dns.name.Name) -> bool:
        return any(rdatas and owner.is_subdomain(name) for (owner, _), rdatas in self._data.items())

    def _soa(self, name: dns.name.Name) -> dns.rrset.RRset:
        for depth in range(len(name.labels)):
            owner = dns.name.Name(name.labels[depth:])
            rdatas = self._data.get((owner, dns.rdatatype.SOA))
            if rdatas:
                return self._rrset(owner, dns.rdatatype.SOA, rdatas)
        apex = dns.name.Name(name.labels[-3:])
        text = f"ns hostmaster 1 3600 600 86400 {self.ttl}"
        soa = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.SOA, text, origin=apex, relativize=False
        )
        return self._rrset(apex, dns.rdatatype.SOA, [soa])

    def _rrset(
        self, name: dns.name.Name, kind: dns.rdatatype.RdataType, rdatas: list[dns.rdata.Rdata]
    ) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(name, dns.rdataclass.IN, kind)
        for rdata in rdatas:
            rrset.add(rdata, self.ttl)
        return rrset

    # -- sockets ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on UDP, then TCP on the same port; retry when port 0 picked a busy TCP port."""
        if self._udp is not None:
            raise RuntimeError("DNS server already started")
        loop = asyncio.get_running_loop()
        for attempt in range(TCP_PORT_ATTEMPTS):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self.port)
            )
            port = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, self.host, port, reuse_address=True
                )
            except OSError:
                transport.close()
                if self.port != 0 or attempt == TCP_PORT_ATTEMPTS - 1:
                    raise
                continue
            self._udp, self.port = transport, port
            return

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._tcp_clients):
                writer.close()
            await asyncio.gather(*self._tcp_clients.values(), return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    async def __aenter__(self) -> LoopbackDnsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 1035 4.2.2: each message is preceded by its two-byte length."""
        task = asyncio.current_task()
        assert task is not None
        self._tcp_clients[writer] = task
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                reply = self.handle(await reader.readexactly(size), "tcp")
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            del self._tcp_clients[writer]
            writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: LoopbackDnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self._server.handle(data, "udp")
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


# -- command line ------------------------------------------------------------------------------


def load_zone(path: Path) -> dict[tuple[str, str], list[str]]:
    """Read ``[[record]]`` rows (name, type, value as a string or a list) from a TOML file."""
    with path.open("rb") as handle:
        rows = tomllib.load(handle).get("record", [])
    records: dict[tuple[str, str], list[str]] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or set(row) != {"name", "type", "value"}:
            raise ValueError(f"{path}: record #{number} needs exactly name, type and value")
        values = row["value"] if isinstance(row["value"], list) else [row["value"]]
        key = (str(row["name"]), str(row["type"]).upper())
        records.setdefault(key, []).extend(str(value) for value in values)
    return records


async def _serve(server: LoopbackDnsServer) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    async with server:
        print(f"dnsserver listening on {server.host}:{server.port} (udp+tcp)", flush=True)
        await stopped.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback authoritative DNS server for tests.")
    parser.add_argument("--listen", default="127.0.0.53:5353", help="HOST:PORT (%(default)s)")
    parser.add_argument("--zone", type=Path, help="TOML file with [[record]] name/type/value rows")
    parser.add_argument("--ttl", type=int, default=60, help="TTL of every answer (default 60)")
    args = parser.parse_args(argv)
    try:
        endpoint = parse_host_port(args.listen)
        records = load_zone(args.zone) if args.zone else {}
        server = LoopbackDnsServer(records, endpoint.host, endpoint.port, args.ttl)
    except (OSError, ValueError, tomllib.TOMLDecodeError, dns.exception.DNSException) as exc:
        print(f"dnsserver: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server))
    except OSError as exc:
        print(f"dnsserver: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
