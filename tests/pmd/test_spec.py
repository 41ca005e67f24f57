"""Ports named on the command line: each kind's form, and clear refusals."""

import pytest

from fastpath.pmd import MbufPool, NullPort, open_port


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
