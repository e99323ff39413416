import CKVM

extension VirtualMachine {
    /// `KVM_CREATE_IRQCHIP`: in-kernel PIC, I/O APIC and a local APIC per vCPU.
    public func createIRQChip() throws(KVMError) {
        try KVMError.check("KVM_CREATE_IRQCHIP", ckvm_create_irqchip(fd))
    }

    /// `KVM_CREATE_PIT2`: the in-kernel i8254 on ports 0x40–0x43 and its
    /// channel-2 gate on port 0x61 (Linux calibrates the TSC with it when it
    /// has no better clock).
    public func createPIT() throws(KVMError) {
        var config = kvm_pit_config()
        try KVMError.check("KVM_CREATE_PIT2", ckvm_create_pit2(fd, &config))
    }

    /// `KVM_IRQ_LINE`: sets the level of a GSI (PIC and I/O APIC pins alike).
    public func setIRQLine(_ gsi: UInt32, high: Bool) throws(KVMError) {
        try KVMError.check("KVM_IRQ_LINE(\(gsi))", ckvm_irq_line(fd, gsi, high ? 1 : 0))
    }
}

extension VCPU {
    /// Reads the local APIC register page, lets `body` change it, writes it back.
    public func modifyLAPIC(_ body: (inout [UInt8]) -> Void) throws(KVMError) {
        var bytes = try lapicRegisters()
        body(&bytes)
        var state = kvm_lapic_state()
        withUnsafeMutableBytes(of: &state.regs) { $0.copyBytes(from: bytes) }
        try KVMError.check("KVM_SET_LAPIC", ckvm_set_lapic(fd, &state))
    }

    /// `KVM_TRANSLATE`: guest-virtual to guest-physical through the guest's
    /// page tables; nil when the address is not mapped there.
    public func translate(_ virtualAddress: UInt64) throws(KVMError) -> UInt64? {
        var t = kvm_translation()
        t.linear_address = virtualAddress
        try KVMError.check("KVM_TRANSLATE", ckvm_translate(fd, &t))
        return t.valid != 0 ? t.physical_address : nil
    }
}

extension VCPU {
    /// The local APIC register page (`KVM_GET_LAPIC`), 1 KiB as the guest sees it.
    public func lapicRegisters() throws(KVMError) -> [UInt8] {
        var state = kvm_lapic_state()
        try KVMError.check("KVM_GET_LAPIC", ckvm_get_lapic(fd, &state))
        return withUnsafeBytes(of: state.regs) { Array($0) }
    }

    /// `KVM_GET_MP_STATE`: runnable, halted, waiting for INIT/SIPI…
    public func mpState() throws(KVMError) -> MPState {
        var state: UInt32 = 0
        try KVMError.check("KVM_GET_MP_STATE", ckvm_get_mp_state(fd, &state))
        return MPState(state)
    }

    /// `KVM_GET_VCPU_EVENTS`: pending or injected exceptions, interrupts and NMIs.
    public func events() throws(KVMError) -> PendingEvents {
        var e = kvm_vcpu_events()
        try KVMError.check("KVM_GET_VCPU_EVENTS", ckvm_get_vcpu_events(fd, &e))
        return PendingEvents(injectingInterrupt: e.interrupt.injected != 0 ? Int(e.interrupt.nr) : nil,
                             nmiPending: e.nmi.pending != 0 || e.nmi.injected != 0)
    }
}
