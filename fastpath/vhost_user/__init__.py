"""vhost-user back-end and front-end over Unix sockets (to come: protocol, channel, devices)."""

__all__: list[str] = []
