"""Process probes on the lab host, from recorded /proc output."""
from lab.hostproc import AIO_RING_MAGIC, parse_aio_tails

# od -An -tu4 -N20 of two rings' headers (id nr head tail magic), and one mapping that is no ring
OD = f"""0 1024 17 17 {AIO_RING_MAGIC}
 1 128 0 5 {AIO_RING_MAGIC}
 0 0 0 0 0
"""


def test_each_aio_rings_completion_counter_is_read_from_its_header():
    assert parse_aio_tails(OD) == [17, 5]


def test_a_process_without_aio_rings_has_none():
    assert parse_aio_tails("") == []
