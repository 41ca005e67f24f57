"""The commands behind `fastpath vhost-net`, `fastpath fwd` and `fastpath gen`: each module has
`add_arguments(parser)` and `run(args) -> exit status`, and composes the library's rooms (the
benchmarks behind `fastpath bench` live in fastpath.bench)."""

__all__: list[str] = []
