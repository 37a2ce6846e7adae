"""Pure logic of the consumer's AMQP helpers."""

from roger.amqp.frames import AckBatcher, has_frame


class FakeTransport:  # only the read buffer matters to has_frame
    def __init__(self, buf: bytes) -> None:
        self._read_buffer = buf


def test_acks_coalesce_a_settled_run_and_single_out_the_rest():
    acks = AckBatcher()
    for tag in range(1, 7):
        acks.delivered(tag)
    for tag in (1, 2, 3, 5):
        acks.settled(tag)
    assert acks.flush() == [(3, True), (5, False)]
    acks.settled(4)
    acks.settled(6)
    assert acks.flush() == [(6, True)]  # 5 went alone: 4 and 6 now form the run


def test_a_rejected_delivery_never_blocks_the_run():
    acks = AckBatcher()
    for tag in (1, 2, 3):
        acks.delivered(tag)
    acks.forget(1)  # requeued instead
    acks.settled(2)
    acks.settled(3)
    assert acks.flush() == [(3, True)]
    assert acks.flush() == []


def test_has_frame_needs_the_whole_frame():
    frame = bytes([1, 0, 1]) + (3).to_bytes(4, "big") + b"abc" + b"\xce"
    assert has_frame(FakeTransport(frame))
    assert has_frame(FakeTransport(frame + frame[:4]))
    assert not has_frame(FakeTransport(frame[:-1]))
    assert not has_frame(FakeTransport(frame[:5]))
