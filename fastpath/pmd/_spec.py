"""Ports named on a command line: `KIND:ARGUMENT[,key=value...]`, for every kind registered
(see `_kinds`)."""

from __future__ import annotations

# Importing the dispatch registers the built-in kinds.
from fastpath.pmd import _dispatch  # noqa: F401
from fastpath.pmd._kinds import PORT_KINDS
from fastpath.pmd._mbuf import MbufPool
from fastpath.pmd._port import Port


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
            options[key] = kind.options[key](value)
        except ValueError as e:
            raise ValueError(f"{spec!r}: {key}={value}: {e}") from None
    try:
        port = kind.make(argument, pool, **options)
    except ValueError as e:
        raise ValueError(f"{spec!r}: {e}") from None
    port.name = spec
    return port
