import KVM
import VMCore

/// Where a vCPU was and what it was doing when the run stopped, for the
/// report of a guest that ran past its timeout: a hung guest is told apart by
/// whether its CPUs spin with interrupts off, sleep in `hlt`, or sleep with
/// an interrupt requested that never arrives.
public struct VCPUState: Sendable, Equatable {
    public var rip: UInt64
    /// RFLAGS.IF.
    public var interruptsEnabled: Bool
    /// Nil where KVM would not say.
    public var mpState: MPState?
    /// Vectors the local APIC has requested (IRR) and is serving (ISR).
    public var requested: [Int] = []
    public var inService: [Int] = []
    /// The task priority register (TPR, offset 0x80).
    public var taskPriority: UInt8 = 0
    /// A vector KVM is in the middle of injecting, and whether an NMI is pending.
    public var injecting: Int?
    public var nmiPending = false
    /// False when RIP is not mapped in the guest's own page tables
    /// (`KVM_TRANSLATE`): a vCPU cannot be running there, so the state is not
    /// the guest's. Seen only in the nested sandbox, where an L2 vCPU's saved
    /// RIP pointed into L1's kvm_amd (docs/platform.md). Nil where unknown.
    public var ripMapped: Bool?

    public init(rip: UInt64, interruptsEnabled: Bool, mpState: MPState? = nil) {
        self.rip = rip
        self.interruptsEnabled = interruptsEnabled
        self.mpState = mpState
    }

    /// Reads it from a stopped vCPU; nil if even its registers cannot be read.
    static func read(_ vcpu: VCPU) -> VCPUState? {
        guard let regs = try? vcpu.registers() else { return nil }
        var s = VCPUState(rip: regs.rip, interruptsEnabled: regs.rflags & 0x200 != 0, mpState: try? vcpu.mpState())
        do { s.ripMapped = try vcpu.translate(regs.rip) != nil } catch {}     // nil: KVM would not say
        if let page = try? vcpu.lapicRegisters() {
            s.requested = Self.vectors(in: page, at: 0x200)
            s.inService = Self.vectors(in: page, at: 0x100)
            if page.count > 0x80 { s.taskPriority = page[0x80] }
        }
        if let e = try? vcpu.events() {
            s.injecting = e.injectingInterrupt
            s.nmiPending = e.nmiPending
        }
        return s
    }

    /// The vectors set in a 256-bit local APIC bitmap (ISR at 0x100, IRR at
    /// 0x200): eight 32-bit registers, 16 bytes apart, vector v in bit v % 32
    /// of register v / 32 (Intel SDM vol. 3, 11.8.4).
    static func vectors(in page: [UInt8], at base: Int) -> [Int] {
        var found: [Int] = []
        for register in 0..<8 {
            let offset = base + register * 0x10
            guard offset + 4 <= page.count else { break }
            let word = LittleEndian.load(UInt32.self, from: page, at: offset)
            for bit in 0..<32 where word & (1 << bit) != 0 { found.append(register * 32 + bit) }
        }
        return found
    }

    /// The words the summary carries when RIP is not mapped in the guest:
    /// Scripts/kvm-sandbox reads them in a timeout line as its own failure.
    public static let notTheGuests = "RIP not mapped in the guest's page tables: not the guest's state"
    /// The words for a halted vCPU that KVM left asleep with an interrupt it
    /// could take. Not counted as the sandbox's failure: in session 12 it
    /// followed svmm's direct receive read in 7 of 7 boots (docs/platform.md).
    public static let notWoken = "halted with a deliverable interrupt requested, which KVM did not take"

    /// Halted with interrupts on and a requested vector whose priority class
    /// is above the processor priority (TPR and the highest vector in
    /// service; Intel SDM vol. 3, 11.8.3.1): an interrupt the CPU takes at
    /// once, which ends HLT. A working KVM wakes such a vCPU within
    /// microseconds (seen only in the nested sandbox: docs/platform.md).
    public var sleepsThroughAnInterrupt: Bool {
        guard mpState == .halted, interruptsEnabled, let highest = requested.max() else { return false }
        let processorPriority = max(Int(taskPriority) >> 4, (inService.max() ?? 0) >> 4)
        return highest >> 4 > processorPriority
    }

    /// "running, interrupts off", "halted, interrupts on, requested 236, in service 34", …
    public var summary: String {
        var parts: [String] = []
        switch mpState {
        case nil: break
        case .halted?: parts.append("halted")
        case .initReceived?, .uninitialized?: parts.append("waiting for INIT/SIPI")
        case .runnable?: parts.append("running")
        case .sipiReceived?: parts.append("SIPI received")
        case let .other(v)?: parts.append("mp state \(v)")
        }
        parts.append(interruptsEnabled ? "interrupts on" : "interrupts off")
        let list = { (v: [Int]) in v.map(String.init).joined(separator: " ") }
        if !requested.isEmpty { parts.append("requested \(list(requested))") }
        if !inService.isEmpty { parts.append("in service \(list(inService))") }
        if let injecting { parts.append("injecting \(injecting)") }
        if nmiPending { parts.append("NMI pending") }
        if ripMapped == false { parts.append(Self.notTheGuests) }
        if sleepsThroughAnInterrupt { parts.append(Self.notWoken) }
        return parts.joined(separator: ", ")
    }
}
