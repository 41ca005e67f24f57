"""The VM-execution, VM-exit and VM-entry controls the model implements, and the capability
MSRs that report them (SDM Vol. 3C §25.6-25.8, Appendix A; spec hv §1.2, §2.2)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

__all__ = ["PinBased", "ProcBased", "Secondary", "ExitControls", "EntryControls",
           "VmxCapabilities"]


class PinBased(IntFlag):
    """Pin-based VM-execution controls (§25.6.1, Table 25-5)."""

    EXTERNAL_INTERRUPT_EXITING = 1 << 0
    PREEMPTION_TIMER = 1 << 6
    PROCESS_POSTED_INTERRUPTS = 1 << 7


class ProcBased(IntFlag):
    """Primary processor-based VM-execution controls (§25.6.2, Table 25-6)."""

    INTERRUPT_WINDOW_EXITING = 1 << 2
    HLT_EXITING = 1 << 7
    CR3_LOAD_EXITING = 1 << 15
    CR3_STORE_EXITING = 1 << 16
    CR8_LOAD_EXITING = 1 << 19
    CR8_STORE_EXITING = 1 << 20
    USE_TPR_SHADOW = 1 << 21
    UNCONDITIONAL_IO_EXITING = 1 << 24
    USE_IO_BITMAPS = 1 << 25
    USE_MSR_BITMAPS = 1 << 28
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class Secondary(IntFlag):
    """Secondary processor-based VM-execution controls (§25.6.2, Table 25-7)."""

    ENABLE_EPT = 1 << 1
    VIRTUALIZE_X2APIC_MODE = 1 << 4
    ENABLE_VPID = 1 << 5
    UNRESTRICTED_GUEST = 1 << 7
    VIRTUAL_INTERRUPT_DELIVERY = 1 << 9


class ExitControls(IntFlag):
    """Primary VM-exit controls (§25.7.1, Table 25-13)."""

    HOST_ADDRESS_SPACE_SIZE = 1 << 9
    ACK_INTERRUPT_ON_EXIT = 1 << 15
    SAVE_PREEMPTION_TIMER = 1 << 22


class EntryControls(IntFlag):
    """VM-entry controls (§25.8.1, Table 25-15)."""

    IA32E_MODE_GUEST = 1 << 9


def _allowed(flags: type[IntFlag]) -> int:
    # A control capability MSR (Appendix A.3-A.5): bits 31:0 the allowed 0-settings (a 1
    # there means the control must be 1), bits 63:32 the allowed 1-settings. The model's
    # defaults are the "TRUE" MSRs of a processor with no default-1 controls: nothing is
    # forced on, and exactly the controls the model implements may be 1.
    return sum(flags) << 32


@dataclass(frozen=True)
class VmxCapabilities:
    """The VMX capability MSRs the model reports (SDM Appendix A), and MAXPHYADDR.

    `basic` is IA32_VMX_BASIC (0x480): VMCS revision identifier in bits 30:0, VMCS region
    size in 44:32, write-back VMCS memory type (6) in 53:50, INS/OUTS instruction information
    (bit 54) and TRUE controls (bit 55). `misc` is IA32_VMX_MISC (0x485): bits 4:0 give the
    preemption timer's rate (it counts down once each time TSC bit X changes); the default 5
    is what KVM emulates for nested guests (`VMX_MISC_EMULATED_PREEMPTION_TIMER_RATE`). The
    control MSRs (0x48D-0x490 and 0x48B) are in the layout `_allowed` describes.
    """

    basic: int = 1 | 0x1000 << 32 | 6 << 50 | 1 << 54 | 1 << 55
    misc: int = 5
    pinbased: int = _allowed(PinBased)
    procbased: int = _allowed(ProcBased)
    procbased2: int = _allowed(Secondary)
    exit: int = _allowed(ExitControls)
    entry: int = _allowed(EntryControls)
    physical_address_width: int = 46  # spec hv §0.1: the test vectors use M = 46

    @property
    def revision_id(self) -> int:
        """The VMCS revision identifier that VMXON and VMPTRLD expect (basic bits 30:0)."""
        return self.basic & 0x7FFF_FFFF

    @property
    def preemption_timer_rate(self) -> int:
        """X of IA32_VMX_MISC bits 4:0: the timer counts down when TSC bit X changes."""
        return self.misc & 0x1F

    @staticmethod
    def allows(capability: int, controls: int) -> bool:
        """Whether a control word keeps to a capability MSR's allowed 0- and 1-settings."""
        must_be_one, may_be_one = capability & 0xFFFF_FFFF, capability >> 32
        return controls & must_be_one == must_be_one and controls & ~may_be_one == 0
