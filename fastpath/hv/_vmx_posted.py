"""Posted interrupts, CPU side, and the virtual-interrupt delivery they feed (SDM Vol. 3C
§30.1-30.2, §30.6; spec hv §2.7).

A poster (VT-d interrupt remapping, another CPU) sets a vector's bit in the posted-interrupt
requests (PIR) of a vCPU's descriptor and, if no notification is outstanding (ON clear) and
notifications are not suppressed (SN clear), sets ON and sends the notification vector NV to
the CPU (`post_interrupt`). When that interrupt arrives in VMX non-root operation with
"process posted interrupts" on, the CPU takes no VM exit: it clears ON, moves PIR into the
virtual-APIC page's IRR, raises RVI to the highest vector posted, and evaluates pending
virtual interrupts (`process_posted_interrupts`). A recognised virtual interrupt is delivered
at an instruction boundary where RFLAGS.IF = 1 with no STI or MOV-SS blocking and interrupt-
window exiting off (`deliver_virtual_interrupt`); the guest's EOI, a WRMSR of the x2APIC EOI
register under "virtualize x2APIC mode", is virtualized (`virtualize_eoi`) without a VM exit.

Not modelled: the EOI-exit bitmap (EOI-induced exits, 45), TPR virtualization beyond reading
VTPR, self-IPI virtualization, APIC-access pages, and the guest's IDT: a delivered virtual
interrupt is counted and RFLAGS left as it was, as if its handler ran and returned (the events
that follow in the stream are the handler's and the interrupted code's).
"""

from __future__ import annotations

import numpy as np

from fastpath.hv._vmcs import Field, Vmcs
from fastpath.hv._vmx_entry import VMX_PAGE

__all__ = ["PI_DESCRIPTOR_DTYPE", "PI_ON", "PI_SN", "pi_control", "post_interrupt",
           "VirtualApic", "X2APIC_EOI_MSR"]

# The posted-interrupt descriptor (64 bytes, 64-byte aligned; Linux `struct pi_desc`): PIR,
# 256 bits, vector v at bit v; then the control word: ON bit 0, SN bit 1, NV bits 23:16,
# NDST bits 63:32.
PI_DESCRIPTOR_DTYPE = np.dtype([("pir", "<u8", (4,)), ("control", "<u8"), ("_reserved", "V24")])
assert PI_DESCRIPTOR_DTYPE.itemsize == 64
PI_ON, PI_SN = 1 << 0, 1 << 1
_PIR_OFFSET = PI_DESCRIPTOR_DTYPE.fields["pir"][1]
_PIR_BYTES = PI_DESCRIPTOR_DTYPE["pir"].itemsize
_CONTROL_OFFSET = PI_DESCRIPTOR_DTYPE.fields["control"][1]

X2APIC_EOI_MSR = 0x80B  # the x2APIC EOI register (SDM Vol. 3A §11.12.1.2)


def pi_control(notification_vector: int, destination: int, on: bool = False,
               suppress: bool = False) -> int:
    """A descriptor's control word: NV, NDST (an x2APIC ID, or the xAPIC ID in bits 15:8)."""
    return int(on) | int(suppress) << 1 | notification_vector << 16 | destination << 32


def _u64(buffer, offset: int) -> int:
    return int.from_bytes(buffer[offset:offset + 8], "little")


def _set_u64(buffer, offset: int, value: int) -> None:
    buffer[offset:offset + 8] = value.to_bytes(8, "little")


def post_interrupt(descriptor, vector: int) -> bool:
    """Post `vector` into a descriptor (64 writable bytes): set its PIR bit, and return
    whether the poster must send the notification vector (ON was clear and SN is clear; ON
    is then set), as KVM's `pi_test_and_set_pir` / `pi_test_and_set_on` do."""
    if not 0 <= vector <= 0xFF:
        raise ValueError(f"vector {vector} does not fit in 8 bits")
    word = _PIR_OFFSET + vector // 64 * 8
    _set_u64(descriptor, word, _u64(descriptor, word) | 1 << vector % 64)
    control = _u64(descriptor, _CONTROL_OFFSET)
    if control & (PI_ON | PI_SN):
        return False
    _set_u64(descriptor, _CONTROL_OFFSET, control | PI_ON)
    return True


# Virtual-APIC page registers (SDM §30.1): 32-bit registers at 16-byte strides.
_VTPR, _VPPR = 0x80, 0xA0
_VISR, _VIRR = 0x100, 0x200


def _highest(bits: int) -> int:
    return bits.bit_length() - 1 if bits else 0


class VirtualApic:
    """A vCPU's virtual-APIC state: the page at VIRTUAL_APIC_PAGE_ADDR in host memory and
    the guest interrupt status (RVI in bits 7:0, SVI in 15:8 of GUEST_INTR_STATUS)."""

    def __init__(self, vmcs: Vmcs, memory):
        self.vmcs = vmcs
        address = vmcs[Field.VIRTUAL_APIC_PAGE_ADDR]
        self.page = memory[address:address + VMX_PAGE]

    def _vector_bits(self, base: int) -> int:
        # The 256-bit IRR or ISR: eight 32-bit registers 16 bytes apart.
        return sum(int.from_bytes(self.page[base + 16 * i:base + 16 * i + 4], "little")
                   << 32 * i for i in range(8))

    def _set_vector_bits(self, base: int, bits: int) -> None:
        for i in range(8):
            self.page[base + 16 * i:base + 16 * i + 4] = (bits >> 32 * i & 0xFFFF_FFFF) \
                .to_bytes(4, "little")

    @property
    def irr(self) -> int:
        """VIRR as a 256-bit integer, vector v at bit v."""
        return self._vector_bits(_VIRR)

    @property
    def isr(self) -> int:
        """VISR as a 256-bit integer."""
        return self._vector_bits(_VISR)

    @property
    def rvi(self) -> int:
        """Requesting virtual interrupt: the highest vector in VIRR as the CPU last set it."""
        return self.vmcs[Field.GUEST_INTR_STATUS] & 0xFF

    @property
    def svi(self) -> int:
        """Servicing virtual interrupt: the vector being handled."""
        return self.vmcs[Field.GUEST_INTR_STATUS] >> 8

    @property
    def vppr(self) -> int:
        """The virtual processor priority (offset 0xA0)."""
        return int.from_bytes(self.page[_VPPR:_VPPR + 4], "little")

    def _set_status(self, rvi: int, svi: int) -> None:
        self.vmcs.store(Field.GUEST_INTR_STATUS, svi << 8 | rvi)

    def _update_ppr(self) -> None:
        # PPR virtualization (§30.1.3): VPPR is VTPR if its class is at least SVI's, else
        # SVI's class.
        vtpr = int.from_bytes(self.page[_VTPR:_VTPR + 4], "little") & 0xFF
        vppr = vtpr if vtpr >> 4 >= self.svi >> 4 else self.svi & 0xF0
        self.page[_VPPR:_VPPR + 4] = vppr.to_bytes(4, "little")

    def recognised(self, interrupt_window_exiting: bool) -> bool:
        """Evaluation of pending virtual interrupts (§30.2.1): RVI's priority class above
        VPPR's, with interrupt-window exiting off."""
        return not interrupt_window_exiting and self.rvi >> 4 > self.vppr >> 4

    def process_posted_interrupts(self, descriptor) -> None:
        """Posted-interrupt processing (§30.6) once the notification vector arrived: clear
        ON, OR PIR into VIRR and clear PIR, raise RVI to the highest vector posted."""
        _set_u64(descriptor, _CONTROL_OFFSET, _u64(descriptor, _CONTROL_OFFSET) & ~PI_ON)
        pir = int.from_bytes(descriptor[_PIR_OFFSET:_PIR_OFFSET + _PIR_BYTES], "little")
        descriptor[_PIR_OFFSET:_PIR_OFFSET + _PIR_BYTES] = bytes(_PIR_BYTES)
        self._set_vector_bits(_VIRR, self.irr | pir)
        if pir:
            self._set_status(max(self.rvi, _highest(pir)), self.svi)

    def deliver(self) -> int:
        """Virtual-interrupt delivery (§30.2.2) of RVI: VIRR to VISR, SVI and VPPR follow,
        RVI drops to the next vector requested. Returns the vector delivered."""
        vector = self.rvi
        self._set_vector_bits(_VISR, self.isr | 1 << vector)
        irr = self.irr & ~(1 << vector)
        self._set_vector_bits(_VIRR, irr)
        self._set_status(_highest(irr), vector)
        self.page[_VPPR:_VPPR + 4] = (vector & 0xF0).to_bytes(4, "little")
        return vector

    def virtualize_eoi(self) -> None:
        """EOI virtualization (§30.1.4): the SVI vector leaves VISR; SVI drops to the next
        vector in service; VPPR is recomputed."""
        isr = self.isr & ~(1 << self.svi)
        self._set_vector_bits(_VISR, isr)
        self._set_status(self.rvi, _highest(isr))
        self._update_ppr()
