"""Ports named on a command line: `KIND:ARGUMENT[,key=value...]`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastpath.pmd._mbuf import MbufPool
from fastpath.pmd._port import Port


@dataclass(frozen=True)
class PortKind:
    """How one kind of port is named and made."""

    name: str
    argument: str              # what the part after the colon is ("" for none)
    options: dict[str, type]   # key=value options and their types
    help: str
    make: Callable[..., Port]
    argument_optional: bool = False


def _vhost(argument, pool, **options):
    from fastpath.pmd._vhost import VhostPort
    return VhostPort(argument, pool, **options)


def _virtio_user(argument, pool, **options):
    from fastpath.pmd._virtio_user import VirtioUserPort
    return VirtioUserPort(argument, pool, **options)


def _ring(argument, pool, **options):
    from fastpath.pmd._ring import RingPort
    return RingPort(argument, pool, **options)


def _tap(argument, pool, **options):
    from fastpath.pmd._tap import TapPort
    return TapPort(argument, pool, **options)


def _pcap(argument, pool, **options):
    from fastpath.pmd._pcap_port import PcapPort
    if not argument and "capture" not in options:
        raise ValueError("give a FILE to replay, an out=FILE to capture to, or both")
    return PcapPort(pool, replay=argument or None, **options)


def _null(argument, pool, **options):
    from fastpath.pmd._null import NullPort
    return NullPort(pool, **options)


def _flag(text: str) -> bool:
    if text in ("1", "yes", "on", "true"):
        return True
    if text in ("0", "no", "off", "false"):
        return False
    raise ValueError(f"{text!r} is not a yes/no value (1/0, yes/no, on/off)")


PORT_KINDS = {kind.name: kind for kind in [
    PortKind("vhost", "SOCKET", {"queues": int, "client": _flag},
             "fastpath's vhost-user back-end on SOCKET (client=1: connect to a front-end "
             "listening there)", _vhost),
    PortKind("virtio-user", "SOCKET",
             {"queues": int, "packed": _flag, "mergeable": _flag, "queue_size": int},
             "a virtio-net front-end of a vhost-user back-end listening on SOCKET", _virtio_user),
    PortKind("ring", "NAME", {"slots": int, "slot_size": int, "rx": _flag, "tx": _flag},
             "a shared-memory ring NAME: what one process sends, another receives (rx=0: "
             "only send; tx=0: only receive)", _ring),
    PortKind("tap", "NAME", {"queues": int},
             "a TAP interface NAME of the kernel's network stack (made if missing; root)", _tap),
    PortKind("pcap", "FILE", {"out": str, "rate": float, "loops": int, "snaplen": int},
             "replays the pcap file FILE (loops=N passes, 0: for ever; rate=N frames per "
             "second, default as fast as asked) and records what it is sent to out=FILE "
             "(snaplen=N bytes of each frame); either side may be left out", _pcap,
             argument_optional=True),
    PortKind("null", "", {"queues": int}, "receives nothing, discards what it is sent", _null),
]}

# Options whose command-line key differs from the keyword the port takes.
_KEYWORDS = {"out": "capture", "rx": "receive", "tx": "send"}


def port_help() -> str:
    """Each kind's form and meaning, for --help."""
    lines = []
    for kind in PORT_KINDS.values():
        form = kind.name
        if kind.argument:
            form += f"[:{kind.argument}]" if kind.argument_optional else f":{kind.argument}"
        options = ",".join(f"{key}=" for key in kind.options)
        lines.append(f"  {form}[,{options}]\n      {kind.help}")
    return "\n".join(lines)


def open_port(spec: str, pool: MbufPool) -> Port:
    """The port `spec` names (see `port_help`), taking mbufs from `pool`; ValueError for a
    spec that names none."""
    kind_name, _, rest = spec.partition(":")
    kind = PORT_KINDS.get(kind_name)
    if kind is None:
        raise ValueError(f"{spec!r}: unknown port kind {kind_name!r}; "
                         f"choose from {', '.join(PORT_KINDS)}")
    parts = rest.split(",") if rest else []
    argument = ""
    if parts and "=" not in parts[0]:
        argument = parts.pop(0)
    if kind.argument and not argument and not kind.argument_optional:
        raise ValueError(f"{spec!r}: give the {kind.argument}, as {kind.name}:{kind.argument}")
    if argument and not kind.argument:
        raise ValueError(f"{spec!r}: {kind.name} takes no argument")
    options = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or key not in kind.options:
            raise ValueError(f"{spec!r}: {part!r} is not an option of {kind.name} "
                             f"(options: {', '.join(kind.options) or 'none'})")
        try:
            options[_KEYWORDS.get(key, key)] = kind.options[key](value)
        except ValueError as e:
            raise ValueError(f"{spec!r}: {key}={value}: {e}") from None
    try:
        port = kind.make(argument, pool, **options)
    except ValueError as e:
        raise ValueError(f"{spec!r}: {e}") from None
    port.name = spec
    return port
