import CKVM
import Glibc
import Synchronization

extension VirtualMachine {
    /// `KVM_IRQFD`: signalling the eventfd raises `gsi` in the in-kernel irqchip
    /// (for an MSI route, delivers that message) without a system call on a vCPU.
    public func attachIRQFD(eventFD: Int32, gsi: UInt32) throws(KVMError) {
        try KVMError.check("KVM_IRQFD(gsi \(gsi))", ckvm_irqfd(fd, eventFD, gsi, 0))
    }

    public func detachIRQFD(eventFD: Int32, gsi: UInt32) throws(KVMError) {
        try KVMError.check("KVM_IRQFD(deassign gsi \(gsi))", ckvm_irqfd(fd, eventFD, gsi, UInt32(KVM_IRQFD_FLAG_DEASSIGN)))
    }

    /// `KVM_IOEVENTFD`: a guest write of `length` bytes to MMIO `address`
    /// signals the eventfd inside KVM: no exit to svmm.
    public func attachIOEventFD(eventFD: Int32, mmio address: UInt64, length: UInt32) throws(KVMError) {
        try KVMError.check("KVM_IOEVENTFD(0x\(String(address, radix: 16)))", ckvm_ioeventfd(fd, eventFD, address, length, 0, 0))
    }

    public func detachIOEventFD(eventFD: Int32, mmio address: UInt64, length: UInt32) throws(KVMError) {
        try KVMError.check("KVM_IOEVENTFD(deassign 0x\(String(address, radix: 16)))",
                           ckvm_ioeventfd(fd, eventFD, address, length, ckvm_ioeventfd_deassign_flag(), 0))
    }

    /// `KVM_SIGNAL_MSI`: delivers one MSI message now.
    public func signalMSI(address: UInt64, data: UInt32) throws(KVMError) {
        let r = ckvm_signal_msi(fd, UInt32(truncatingIfNeeded: address), UInt32(truncatingIfNeeded: address >> 32), data)
        if r < 0 { throw KVMError("KVM_SIGNAL_MSI", errno: -r) }
    }
}

/// The VM's GSI routing table. `KVM_SET_GSI_ROUTING` replaces the whole
/// table, so this keeps KVM's default irqchip routes (GSI 0–15 to the PICs
/// and the I/O APIC pin of the same number, 16–23 to the I/O APIC alone, as
/// KVM sets them up with `KVM_CREATE_IRQCHIP`) next to the MSI routes devices
/// add, and writes them all on every change.
public final class GSIRouter: Sendable {
    public struct MSIMessage: Sendable, Equatable {
        public var address: UInt64
        public var data: UInt32
        public init(address: UInt64, data: UInt32) { self.address = address; self.data = data }
    }

    /// Writes a whole table: `KVM_SET_GSI_ROUTING` on the VM (a stand-in in tests).
    let writeTable: @Sendable ([ckvm_route]) -> Int32
    /// The first GSI past the I/O APIC's 24 pins.
    public static let firstMSIGSI: UInt32 = 24
    private let state = Mutex<(next: UInt32, msi: [UInt32: MSIMessage])>((GSIRouter.firstMSIGSI, [:]))

    public convenience init(vm: VirtualMachine) {
        self.init { routes in routes.withUnsafeBufferPointer { ckvm_set_gsi_routing(vm.fd, $0.baseAddress, UInt32($0.count)) } }
    }

    init(writeTable: @escaping @Sendable ([ckvm_route]) -> Int32) { self.writeTable = writeTable }

    /// A new GSI for an MSI route (routed once `setMSI` gives its message).
    public func allocate() -> UInt32 {
        state.withLock { s in
            defer { s.next += 1 }
            return s.next
        }
    }

    /// Points `gsi` at an MSI message and rewrites the table. The table is
    /// written under the lock: two devices' vCPUs (each under its own
    /// transport's lock) reprogramming vectors at once could otherwise write
    /// their tables in the other order, the older last, and KVM would keep
    /// a table without the newer route (the i8042's lost edges, session 20,
    /// were this shape of race).
    public func setMSI(_ gsi: UInt32, _ message: MSIMessage) throws(KVMError) {
        let r = state.withLock { s -> Int32 in
            if s.msi[gsi] == message { return 0 }
            let old = s.msi[gsi]
            s.msi[gsi] = message
            let r = writeTable(Self.table(s.msi))
            if r < 0 { s.msi[gsi] = old }   // KVM kept the table it had
            return r
        }
        if r < 0 { throw KVMError("KVM_SET_GSI_ROUTING", errno: -r) }
    }

    static func table(_ msi: [UInt32: MSIMessage]) -> [ckvm_route] {
        let chip = UInt32(KVM_IRQ_ROUTING_IRQCHIP)
        var routes: [ckvm_route] = []
        for gsi in UInt32(0)..<24 {
            if gsi < 8 { routes.append(ckvm_route(gsi: gsi, type: chip, a: UInt32(KVM_IRQCHIP_PIC_MASTER), b: gsi, c: 0)) }
            else if gsi < 16 { routes.append(ckvm_route(gsi: gsi, type: chip, a: UInt32(KVM_IRQCHIP_PIC_SLAVE), b: gsi - 8, c: 0)) }
            routes.append(ckvm_route(gsi: gsi, type: chip, a: UInt32(KVM_IRQCHIP_IOAPIC), b: gsi, c: 0))
        }
        for (gsi, m) in msi.sorted(by: { $0.key < $1.key }) {
            routes.append(ckvm_route(gsi: gsi, type: UInt32(KVM_IRQ_ROUTING_MSI), a: UInt32(truncatingIfNeeded: m.address),
                                     b: UInt32(truncatingIfNeeded: m.address >> 32), c: m.data))
        }
        return routes
    }
}
