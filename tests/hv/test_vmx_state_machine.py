"""Random sequences of VMX instructions: the vCPU against the SDM's pseudocode as
`fastpath.testing.reference.vmx.InstructionOutcomes` writes it."""

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fastpath.errors import VmFailInvalid, VmFailValid, VmxNotEnabled
from fastpath.hv.vmx import NO_CURRENT_VMCS, ExitReason, Field, Vcpu, VcpuMode, ready_vcpu
from fastpath.testing.reference.vmx import InstructionOutcomes

GOOD = {0x1000, 0x2000, 0x3000}
BAD_REVISION = 0x5000
VMXON = 0x1000
ALIGNED = GOOD | {BAD_REVISION}
# Few addresses, so that sequences revisit them: a VMXON region, VMCSs, and bad ones.
addresses = st.sampled_from([0x1000, 0x2000, 0x3000, 0x2000, 0x3000, BAD_REVISION, 0x2008,
                             1 << 46])


def _outcome(call, *args):
    try:
        call(*args)
    except VmxNotEnabled:
        return "#UD"
    except VmFailInvalid:
        return "VMfailInvalid"
    except VmFailValid as error:
        return ("VMfailValid", error.number)
    return "ok"


class VmxInstructions(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        memory = bytearray(0x10000)
        template = ready_vcpu(memory)  # a VMCS at 0x2000 whose entry checks pass
        fields = {f: template.vmcs[f] for f in Field}
        self.vcpu = Vcpu(memory)
        for address in GOOD:
            memory[address:address + 4] = (1).to_bytes(4, "little")
        memory[BAD_REVISION:BAD_REVISION + 4] = (2).to_bytes(4, "little")
        self.fields = fields
        self.reference = InstructionOutcomes(GOOD, ALIGNED)
        # Start in VMX operation, so that most steps reach past the #UD checks.
        self._same(_outcome(self.vcpu.vmxon, VMXON), self.reference.vmxon(VMXON))

    def _same(self, outcome, expected):
        event(str(outcome))
        assert outcome == expected
        if isinstance(expected, tuple):
            assert self.vcpu.vmread(Field.VM_INSTRUCTION_ERROR) == expected[1]

    @rule(address=addresses)
    def vmxon(self, address):
        self._same(_outcome(self.vcpu.vmxon, address), self.reference.vmxon(address))

    @rule(vmxon_again=st.booleans())
    def vmxoff(self, vmxon_again):
        self._same(_outcome(self.vcpu.vmxoff), self.reference.vmxoff())
        if vmxon_again:
            self.vmxon(VMXON)

    @rule(address=addresses)
    def vmclear(self, address):
        self._same(_outcome(self.vcpu.vmclear, address), self.reference.vmclear(address))

    @rule(address=addresses)
    def vmptrld(self, address):
        outcome = _outcome(self.vcpu.vmptrld, address)
        self._same(outcome, self.reference.vmptrld(address))
        if outcome == "ok":  # give it the fields that pass the entry checks
            for field, value in self.fields.items():
                self.vcpu.vmcs.store(field, value)

    def _enter_and_exit(self, launch):
        outcome = _outcome(self.vcpu.vmlaunch if launch else self.vcpu.vmresume)
        self._same(outcome, self.reference.enter(launch))
        if outcome == "ok":
            assert self.vcpu.mode is VcpuMode.GUEST
            self.vcpu.vm_exit(ExitReason.VMCALL, instruction_length=3)

    @rule()
    def vmlaunch(self):
        self._enter_and_exit(launch=True)

    @rule()
    def vmresume(self):
        self._enter_and_exit(launch=False)

    @invariant()
    def same_current_vmcs(self):
        if self.vcpu.mode is VcpuMode.ROOT:
            current = self.reference.current
            assert self.vcpu.vmptrst() == (NO_CURRENT_VMCS if current is None else current)


VmxInstructions.TestCase.settings = settings(max_examples=300, stateful_step_count=50,
                                              deadline=None)
test_vmx_instructions_follow_the_sdm_pseudocode = VmxInstructions.TestCase
