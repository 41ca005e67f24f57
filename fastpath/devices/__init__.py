"""One room per virtio device behind vhost-user: `fastpath.devices.net` (virtio-net) today.

A device implements `fastpath.vhost_user.Device` and keeps everything of its own (config
space, queues, kernels, its drivers); where it needs something from a higher layer (a block
device's request executor, say) it defines the interface and the higher layer implements it.
"""

__all__: list[str] = []
