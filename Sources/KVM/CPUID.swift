import CKVM
import Glibc

/// One CPUID leaf/subleaf as KVM describes it.
public struct CPUIDEntry: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }
}

/// Passes an entry list to a kvm_cpuid2-taking ioctl.
func withCPUID2<R>(capacity: Int, _ entries: [CPUIDEntry], _ body: (UnsafeMutablePointer<kvm_cpuid2>) -> R) -> R {
    let bytes = MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
    let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
    defer { raw.deallocate() }
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    // SAFETY: the allocation holds the header plus `capacity` entries.
    let c = raw.bindMemory(to: kvm_cpuid2.self, capacity: 1)
    c.pointee.nent = UInt32(max(entries.count, capacity))
    let slots = ckvm_cpuid2_entries(c)!
    for (i, e) in entries.enumerated() {
        slots[i] = kvm_cpuid_entry2(function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx, padding: (0, 0, 0))
    }
    if !entries.isEmpty { c.pointee.nent = UInt32(entries.count) }
    return body(c)
}

extension Hypervisor {
    /// `KVM_GET_SUPPORTED_CPUID`: what this KVM can show a guest.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            let result: Result<[CPUIDEntry], KVMError> = withCPUID2(capacity: capacity, []) { c in
                let r = ckvm_get_supported_cpuid(fd, c)
                if r < 0 { return .failure(KVMError("KVM_GET_SUPPORTED_CPUID", errno: -r)) }
                let slots = ckvm_cpuid2_entries(c)!
                return .success((0..<Int(c.pointee.nent)).map { i in
                    let s = slots[i]
                    return CPUIDEntry(function: s.function, index: s.index, flags: s.flags, eax: s.eax, ebx: s.ebx, ecx: s.ecx, edx: s.edx)
                })
            }
            switch result {
            case .success(let entries): return entries
            case .failure(let e) where e.errno == E2BIG && capacity < 4096: capacity *= 2
            case .failure(let e): throw e
            }
        }
    }
}

extension VCPU {
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        let r = withCPUID2(capacity: entries.count, entries) { ckvm_set_cpuid2(fd, $0) }
        try KVMError.check("KVM_SET_CPUID2", r)
    }
}
