import CKVM
import Glibc

/// A vCPU's whole state as KVM keeps it, each part in KVM's own structure
/// (its bytes are what a snapshot stores: the kernel's ABI, which does not
/// change between releases). Read with the vCPU out of `KVM_RUN` and its last
/// exit completed (`RunningMachine.pause` sees to both).
public struct VCPUSavedState: Sendable, Equatable {
    public var mpState: UInt32 = 0
    public var regs: [UInt8] = []
    public var sregs: [UInt8] = []
    /// struct kvm_xsave: 4 KiB, or the size KVM_CAP_XSAVE2 gives.
    public var xsave: [UInt8] = []
    public var xcrs: [UInt8] = []
    public var debugregs: [UInt8] = []
    /// Empty without an in-kernel local APIC.
    public var lapic: [UInt8] = []
    public var events: [UInt8] = []
    /// The MSRs KVM saves (its index list less those this vCPU refuses), the TSC and kvm-clock's among them.
    public var msrIndices: [UInt32] = []
    public var msrValues: [UInt64] = []

    public init() {}

    /// The general-purpose registers, RIP and RFLAGS in the saved state.
    public func registers() throws(SavedStateError) -> Registers { Registers(try load(kvm_regs.self, from: regs, "regs")) }

    /// The sizes of KVM's structures, for checking what a file holds.
    public static let sizes: [String: Int] = [
        "regs": MemoryLayout<kvm_regs>.size, "sregs": MemoryLayout<kvm_sregs>.size, "xcrs": MemoryLayout<kvm_xcrs>.size,
        "debugregs": MemoryLayout<kvm_debugregs>.size, "lapic": MemoryLayout<kvm_lapic_state>.size,
        "events": MemoryLayout<kvm_vcpu_events>.size,
    ]
}

/// The VM's own state: both PICs and the I/O APIC, kvm-clock, and the PIT when there is one.
public struct VMSavedState: Sendable, Equatable {
    /// struct kvm_irqchip for chip 0 (PIC master), 1 (PIC slave), 2 (I/O APIC).
    public var irqchips: [[UInt8]] = []
    public var clock: [UInt8] = []
    public var pit: [UInt8]?

    public init() {}

    public static let irqchipSize = MemoryLayout<kvm_irqchip>.size
    public static let clockSize = MemoryLayout<kvm_clock_data>.size
    public static let pitSize = MemoryLayout<kvm_pit_state2>.size
}

/// A saved part of the wrong size: a file from another ABI, or damaged.
public struct SavedStateError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(description: String) { self.description = description }
}

func bytes<T>(of value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

func load<T>(_ type: T.Type, from bytes: [UInt8], _ name: String) throws(SavedStateError) -> T {
    guard bytes.count == MemoryLayout<T>.size else {
        throw SavedStateError(description: "\(name): \(bytes.count) bytes, not the \(MemoryLayout<T>.size) of KVM's structure")
    }
    // SAFETY: the buffer holds exactly one T's bytes; KVM's structures are plain data.
    return bytes.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
}

extension Hypervisor {
    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var capacity: UInt32 = 256
        while true {
            var indices = [UInt32](repeating: 0, count: Int(capacity))
            var needed: UInt32 = 0
            let r = ckvm_get_msr_index_list(fd, &indices, capacity, &needed)
            if r == -E2BIG, needed > capacity { capacity = needed; continue }
            let n = try KVMError.check("KVM_GET_MSR_INDEX_LIST", r)
            return Array(indices.prefix(Int(n)))
        }
    }
}

extension VCPU {
    /// Reads every part of the vCPU's state. `msrIndices` is the
    /// hypervisor's list; MSRs this vCPU refuses are left out.
    public func saveState(msrIndices: [UInt32], lapic withLAPIC: Bool) throws(KVMError) -> VCPUSavedState {
        var s = VCPUSavedState()
        var mp: UInt32 = 0
        _ = try KVMError.check("KVM_GET_MP_STATE", ckvm_get_mp_state(fd, &mp))
        s.mpState = mp
        s.regs = try get("KVM_GET_REGS", kvm_regs(), ckvm_get_regs)
        s.sregs = try get("KVM_GET_SREGS", kvm_sregs(), ckvm_get_sregs)
        let xsave2 = Int(max(0, ckvm_check_extension(vm.fd, Int32(KVM_CAP_XSAVE2))))
        var xsave = [UInt8](repeating: 0, count: max(MemoryLayout<kvm_xsave>.size, xsave2))
        _ = try KVMError.check("KVM_GET_XSAVE", xsave.withUnsafeMutableBytes { ckvm_get_xsave(fd, $0.baseAddress, xsave2 > 0 ? 1 : 0) })
        s.xsave = xsave
        s.xcrs = try get("KVM_GET_XCRS", kvm_xcrs(), ckvm_get_xcrs)
        s.debugregs = try get("KVM_GET_DEBUGREGS", kvm_debugregs(), ckvm_get_debugregs)
        if withLAPIC { s.lapic = try get("KVM_GET_LAPIC", kvm_lapic_state(), ckvm_get_lapic) }
        // MSRs: KVM stops at the first one it refuses; drop that one and go on.
        var pending = msrIndices[...]
        while !pending.isEmpty {
            let chunk = Array(pending)
            var values = [UInt64](repeating: 0, count: chunk.count)
            let n = Int(try KVMError.check("KVM_GET_MSRS", ckvm_get_msrs_flat(fd, chunk, &values, UInt32(chunk.count))))
            s.msrIndices += chunk.prefix(n)
            s.msrValues += values.prefix(n)
            pending = pending.dropFirst(n + 1)
        }
        s.events = try get("KVM_GET_VCPU_EVENTS", kvm_vcpu_events(), ckvm_get_vcpu_events)
        return s
    }

    /// One KVM_GET_* of a fixed-size structure, as its bytes.
    func get<T>(_ name: String, _ empty: T, _ ioctl: (Int32, UnsafeMutablePointer<T>?) -> Int32) throws(KVMError) -> [UInt8] {
        var value = empty
        _ = try KVMError.check(name, ioctl(fd, &value))
        return bytes(of: value)
    }

    /// One KVM_SET_* of a fixed-size structure from its saved bytes (checked for size).
    func set<T>(_ name: String, _ saved: [UInt8], as type: T.Type, _ ioctl: (Int32, UnsafePointer<T>?) -> Int32) throws {
        var value = try load(type, from: saved, name)
        _ = try KVMError.check(name, ioctl(fd, &value))
    }

    /// Sets every part, in the order KVM needs (Firecracker's): MP state,
    /// registers, special registers, XSAVE, XCRs, debug registers, local
    /// APIC, MSRs, and the pending events last. The vCPU's CPUID is set
    /// before, as the board builds it.
    public func restoreState(_ s: VCPUSavedState) throws {
        _ = try KVMError.check("KVM_SET_MP_STATE", ckvm_set_mp_state(fd, s.mpState))
        try set("KVM_SET_REGS", s.regs, as: kvm_regs.self, ckvm_set_regs)
        try set("KVM_SET_SREGS", s.sregs, as: kvm_sregs.self, ckvm_set_sregs)
        guard s.xsave.count >= MemoryLayout<kvm_xsave>.size else {
            throw SavedStateError(description: "xsave: \(s.xsave.count) bytes, less than KVM's \(MemoryLayout<kvm_xsave>.size)")
        }
        _ = try KVMError.check("KVM_SET_XSAVE", s.xsave.withUnsafeBytes { ckvm_set_xsave(fd, $0.baseAddress) })
        try set("KVM_SET_XCRS", s.xcrs, as: kvm_xcrs.self, ckvm_set_xcrs)
        try set("KVM_SET_DEBUGREGS", s.debugregs, as: kvm_debugregs.self, ckvm_set_debugregs)
        if !s.lapic.isEmpty { try set("KVM_SET_LAPIC", s.lapic, as: kvm_lapic_state.self, ckvm_set_lapic) }
        guard s.msrIndices.count == s.msrValues.count else {
            throw SavedStateError(description: "msrs: \(s.msrIndices.count) indices but \(s.msrValues.count) values")
        }
        // KVM stops at the first MSR it refuses. One it refuses at zero (the
        // power-on value) is skipped: a feature this vCPU's CPUID lacks, whose
        // MSR it reads as 0 but will not be written; any other refusal fails.
        var at = 0
        while at < s.msrIndices.count {
            let indices = Array(s.msrIndices[at...]), values = Array(s.msrValues[at...])
            let n = Int(try KVMError.check("KVM_SET_MSRS", ckvm_set_msrs_flat(fd, indices, values, UInt32(indices.count))))
            at += n
            guard at < s.msrIndices.count else { break }
            guard s.msrValues[at] == 0 else {
                throw SavedStateError(description: "KVM_SET_MSRS refused MSR 0x\(String(s.msrIndices[at], radix: 16)) = 0x\(String(s.msrValues[at], radix: 16))")
            }
            at += 1
        }
        try set("KVM_SET_VCPU_EVENTS", s.events, as: kvm_vcpu_events.self, ckvm_set_vcpu_events)
    }
}

extension VirtualMachine {
    /// The in-kernel irqchip's three chips, kvm-clock, and the PIT when `pit`.
    public func saveState(pit: Bool) throws(KVMError) -> VMSavedState {
        var s = VMSavedState()
        for chip in UInt32(0)...2 {
            var c = kvm_irqchip()
            c.chip_id = chip
            _ = try KVMError.check("KVM_GET_IRQCHIP(\(chip))", ckvm_get_irqchip(fd, &c))
            s.irqchips.append(bytes(of: c))
        }
        var clock = kvm_clock_data()
        _ = try KVMError.check("KVM_GET_CLOCK", ckvm_get_clock(fd, &clock))
        s.clock = bytes(of: clock)
        if pit {
            var p = kvm_pit_state2()
            _ = try KVMError.check("KVM_GET_PIT2", ckvm_get_pit2(fd, &p))
            s.pit = bytes(of: p)
        }
        return s
    }

    /// Sets the irqchip, the PIT and kvm-clock from a saved state (the
    /// clock's flags cleared: KVM_SET_CLOCK takes only its value).
    public func restoreState(_ s: VMSavedState) throws {
        guard s.irqchips.count == 3 else { throw SavedStateError(description: "irqchip: \(s.irqchips.count) chips, not 3") }
        for (i, saved) in s.irqchips.enumerated() {
            var c = try load(kvm_irqchip.self, from: saved, "irqchip \(i)")
            _ = try KVMError.check("KVM_SET_IRQCHIP(\(c.chip_id))", ckvm_set_irqchip(fd, &c))
        }
        if let saved = s.pit {
            var p = try load(kvm_pit_state2.self, from: saved, "pit")
            _ = try KVMError.check("KVM_SET_PIT2", ckvm_set_pit2(fd, &p))
        }
        var clock = try load(kvm_clock_data.self, from: s.clock, "clock")
        clock.flags = 0
        _ = try KVMError.check("KVM_SET_CLOCK", ckvm_set_clock(fd, &clock))
    }
}
