import VMCore
import KVM

/// The CPUID a vCPU sees: what KVM supports, with per-vCPU APIC ids and
/// topology (one socket, one thread per core, `cpus` cores).
public struct CPUIDPolicy: Sendable {
    public var supported: [CPUIDEntry]
    public var cpus: Int

    public init(supported: [CPUIDEntry], cpus: Int) {
        self.supported = supported
        self.cpus = cpus
    }

    public func entries(forCPU id: Int) -> [CPUIDEntry] {
        let apicID = UInt32(id)
        // Bits needed to number the cores (the x2APIC id shift of the core level).
        var shift: UInt32 = 0
        while (1 << shift) < cpus { shift += 1 }
        return supported.map { entry in
            var e = entry
            switch e.function {
            case 0x1:
                // EBX[31:24] initial APIC id, [23:16] logical processors; EDX[28] HTT.
                e.ebx = (e.ebx & 0x0000_FFFF) | apicID << 24 | UInt32(min(cpus, 255)) << 16
                if cpus > 1 { e.edx |= 1 << 28 } else { e.edx &= ~(1 << 28) }
                // ECX[31]: running under a hypervisor. KVM does not set it in
                // its supported list; without it Linux never looks at the KVM
                // leaves (0x4000_0000) and finds no kvm-clock.
                e.ecx |= 1 << 31
            case 0xB, 0x1F:
                // Extended topology: level 0 = SMT (1 thread), level 1 = core.
                e.edx = apicID
                switch e.index {
                case 0: e.eax = 0; e.ebx = 1; e.ecx = 1 << 8
                case 1: e.eax = shift; e.ebx = UInt32(cpus); e.ecx = 2 << 8 | 1
                default: e.eax = 0; e.ebx = 0; e.ecx = e.index
                }
            case 0x4:
                // Deterministic cache parameters: EAX[31:26] = cores per package - 1.
                e.eax = (e.eax & 0x03FF_FFFF) | UInt32(cpus - 1) << 26
            default:
                break
            }
            return e
        }
    }
}
