"""The board side of a weight load (``'W'`` frames, :mod:`bitfab.boards.protocol`): weights in
iCE40 UP SPRAM have no initial contents in the bitstream, so the host sends them after the
bitstream is loaded and before the first input (docs/boards.md, "Weights in SPRAM").

:class:`WeightLoader` takes the chunks the :class:`~bitfab.boards.framing.FrameReceiver` assembled,
writes their words into the network's ``load`` stream (:class:`bitfab.hw.layer.Network`) a word
per clock, keeps a CRC-16 of the image and answers every chunk with a status byte; ``loaded``
goes high only when the whole image has come and its CRC equals the one built into the bitstream
(computed from the model's weights), so a wrong or partial load leaves the board refusing inputs.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.wiring import In, Out

from bitfab.errors import BitfabError
from bitfab.hw.spram import word_layout

from .protocol import (
    LOAD_BAD_CRC,
    LOAD_BYTES,
    LOAD_DONE,
    LOAD_MORE,
    LOAD_ORDER,
    LOAD_WORDS,
    load_crc,
)

__all__ = ["WeightLoader"]

#: the load CRC a word per clock: :func:`bitfab.boards.protocol.load_crc` (each word high byte
#: first is what a non-reflected 16-bit-wide CRC computes)
CRC16_WORDS = catalog.CRC16_CCITT_FALSE(data_width=16)


class WeightLoader(wiring.Component):
    """Write weight-load chunks into a network's SPRAM and check the image's CRC.

    Parameters
    ----------
    image : sequence of int
        The 16-bit words of the model's weight image (:meth:`bitfab.hw.layer.Network.load_image`):
        their count and CRC are built in.

    Members
    -------
    i : In(stream.Signature(8 * LOAD_BYTES))
        Chunks: a 16-bit chunk index (0 restarts the load) and :data:`LOAD_WORDS` words, little
        endian.
    o : Out(stream.Signature(word_layout()))
        To the network's ``load``.
    ack : Out(stream.Signature(8))
        One :data:`~bitfab.boards.protocol.LOAD_STATUS` byte per chunk.
    loaded : Out(1)
        A whole image with the built-in CRC has been written.
    """

    def __init__(self, image):
        words = [int(w) for w in image]
        if not words:
            self._MustUse__silence = True
            raise BitfabError("a weight image holds at least one word")
        self._total = len(words)
        self._crc = load_crc(words)
        super().__init__({
            "i": In(stream.Signature(unsigned(8 * LOAD_BYTES))),
            "o": Out(stream.Signature(word_layout())),
            "ack": Out(stream.Signature(8)),
            "loaded": Out(1),
        })

    @property
    def total(self) -> int:
        """Words in the image."""
        return self._total

    @property
    def crc(self) -> int:
        """The image's CRC, built in."""
        return self._crc

    def elaborate(self, platform):
        m = Module()
        total = self._total
        m.submodules.crc = crc = CRC16_WORDS.create()
        pos = Signal(range(total + 1), name="pos")        # words of the image written
        chunk = Signal(16, name="chunk")                   # the chunk expected next
        k = Signal(range(LOAD_WORDS), name="k")            # the chunk's word being written
        first = Signal(name="first")                       # the next word restarts the image
        status = Signal(8, name="status")
        loaded = Signal(name="loaded_r")
        index = self.i.payload[:16]
        # the chunk stays in the frame receiver's buffer until its words are written (a copy
        # would cost 16 flip-flops a word; the host waits for the answer before the next chunk)
        word = self.i.payload[16:].word_select(k, 16)
        m.d.comb += [
            self.loaded.eq(loaded),
            self.o.payload.data.eq(word),
            self.o.payload.restart.eq(first),
            self.ack.payload.eq(status),
            crc.data.eq(word),
        ]
        with m.FSM():
            with m.State("idle"):
                with m.If(self.i.valid):
                    m.d.sync += k.eq(0)
                    with m.If(index == 0):
                        m.d.comb += crc.start.eq(1)
                        m.d.sync += [pos.eq(0), chunk.eq(1), first.eq(1), loaded.eq(0)]
                        m.next = "write"
                    with m.Elif((index == chunk) & (pos != total)):
                        m.d.sync += [chunk.eq(chunk + 1), first.eq(0)]
                        m.next = "write"
                    with m.Else():
                        m.d.comb += self.i.ready.eq(1)
                        m.d.sync += status.eq(LOAD_ORDER)
                        m.next = "ack"
            with m.State("write"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += [pos.eq(pos + 1), k.eq(k + 1), first.eq(0)]
                    with m.If((k == LOAD_WORDS - 1) | (pos == total - 1)):  # padding dropped
                        m.d.comb += self.i.ready.eq(1)
                        m.next = "check"
            with m.State("check"):  # the CRC register holds the image's CRC a clock later
                with m.If(pos == total):
                    with m.If(crc.crc == self._crc):
                        m.d.sync += [status.eq(LOAD_DONE), loaded.eq(1)]
                    with m.Else():
                        m.d.sync += status.eq(LOAD_BAD_CRC)
                with m.Else():
                    m.d.sync += status.eq(LOAD_MORE)
                m.next = "ack"
            with m.State("ack"):
                m.d.comb += self.ack.valid.eq(1)
                with m.If(self.ack.ready):
                    m.next = "idle"
        return m
