"""Poll-mode drivers: mbuf pools, ports with burst receive and transmit, forwarding engines,
and the poll host that runs compiled pollers (rx port -> engine -> tx port, vhost-net's queue
pairs, a program's own) on a core, with mailboxes between hosts.

    pool = MbufPool()
    port = VhostPort("/tmp/vhost.sock", pool)
    mbufs = pool.burst(32)
    n = port.rx_burst(0, mbufs, 32)        # frames the guest sent, in mbufs[:n]
    sent = port.tx_burst(0, mbufs, n)      # back to the guest; mbufs[sent:n] are still yours
"""

from fastpath.pmd._forwarder import MODES as FORWARDER_MODES
from fastpath.pmd._forwarder import Forwarder
from fastpath.pmd._host import PollHost
from fastpath.pmd._kinds import PortKind, register_port_kind
from fastpath.pmd._lcore import ForwardingLoop, Stream, paired_streams
from fastpath.pmd._mailbox import (
    MESSAGE_WORDS,
    Mailbox,
    mailbox_send,
    mailbox_take,
    message_buffer,
)
from fastpath.pmd._mbuf import MbufPool
from fastpath.pmd._null import NullPort
from fastpath.pmd._pcap import PcapCapture
from fastpath.pmd._pcap_port import PcapPort
from fastpath.pmd._pollers import (
    HOST_SERVICE,
    POLLER_ARGS,
    POLLER_COLUMNS,
    Poller,
    register_poller,
)
from fastpath.pmd._port import Port, PortCounters
from fastpath.pmd._relay import Relay
from fastpath.pmd._ring import RingPort
from fastpath.pmd._spec import PORT_KINDS, open_port, port_help
from fastpath.pmd._tap import TapPort
from fastpath.pmd._traffic import (
    DEFAULT_FLOWS,
    ETH_DST,
    ETH_SRC,
    MAX_FLOWS,
    MAX_SIZE,
    MIN_SIZE,
    PROFILES,
    profile_frames,
)
from fastpath.pmd._vhost import VhostPort
from fastpath.pmd._virtio_user import VirtioUserPort

__all__ = ["MbufPool", "Port", "PortCounters", "NullPort", "VhostPort", "open_port",
           "port_help", "VirtioUserPort", "RingPort", "TapPort", "PcapPort",
           "PORT_KINDS", "PortKind", "register_port_kind", "ForwardingLoop", "Stream",
           "paired_streams",
           # The poll host: pollers of any kind on a core, mailboxes between cores.
           "PollHost", "Poller", "register_poller", "POLLER_ARGS", "POLLER_COLUMNS", "HOST_SERVICE",
           "Mailbox", "MESSAGE_WORDS", "mailbox_send", "mailbox_take", "message_buffer",
           "Relay",
           # vhost-net's loop over virtio-net devices, and the pcap capture it can record to.
           "Forwarder", "FORWARDER_MODES", "PcapCapture",
           # Traffic profiles (Scapy templates) that txonly sends and `fastpath gen` writes.
           "PROFILES", "profile_frames", "DEFAULT_FLOWS", "MAX_FLOWS", "MIN_SIZE", "MAX_SIZE",
           "ETH_SRC", "ETH_DST"]
