"""Ports named on the command line: each kind's form, and clear refusals."""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from fastpath.pmd import MbufPool, NullPort, PcapPort, open_port


@pytest.fixture
def pool():
    return MbufPool(64)


def test_a_null_port_takes_its_options(pool):
    port = open_port("null:queues=2", pool)
    assert isinstance(port, NullPort) and port.queues == 2 and port.name == "null:queues=2"


@pytest.mark.parametrize("spec, message", [
    ("nonsense:x", "unknown port kind 'nonsense'"),
    ("vhost", "give the SOCKET"),
    ("null:x", "takes no argument"),
    ("null:speed=3", "not an option of null"),
    ("null:queues=many", "queues=many"),
    ("vhost:/tmp/x.sock,client=maybe", "not a yes/no value"),
])
def test_bad_specs_are_refused_with_the_reason(pool, spec, message):
    with pytest.raises(ValueError, match=message):
        open_port(spec, pool)


def test_a_pcap_port_replays_its_argument_and_captures_to_out(pool, tmp_path):
    replayed, captured = tmp_path / "in.pcap", tmp_path / "out.pcap"
    wrpcap(str(replayed), [Ether() / IP() / UDP()] * 3)
    spec = f"pcap:{replayed},out={captured},loops=2,rate=1000,snaplen=128"
    with open_port(spec, pool) as port:
        assert isinstance(port, PcapPort) and port.name == spec
        assert len(port.replay_file) == 3 and port.loops == 2 and port.rate == 1000
        assert port.ends and not port.done
    assert captured.exists()
    with open_port(f"pcap:out={captured}", pool) as port:
        assert port.replay_file is None and not port.ends


@pytest.mark.parametrize("spec, message", [
    ("pcap", "give a FILE to replay, an out=FILE to capture to, or both"),
    ("pcap:/nonexistent/in.pcap", "No such file"),
    ("pcap:out=/tmp/x.pcap,loops=-1", "'pcap:out=/tmp/x.pcap,loops=-1': loops is 0"),
])
def test_bad_pcap_specs_are_refused_with_the_reason(pool, spec, message):
    with pytest.raises((ValueError, OSError), match=message):
        open_port(spec, pool)
