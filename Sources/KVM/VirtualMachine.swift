import CKVM
import Glibc

/// One KVM virtual machine: memory slots and vCPUs.
public final class VirtualMachine: Sendable {
    public let fd: Int32
    public let hypervisor: Hypervisor

    init(fd: Int32, hypervisor: Hypervisor) {
        self.fd = fd
        self.hypervisor = hypervisor
    }

    deinit { close(fd) }

    /// Maps `size` bytes of host memory at `host` to guest-physical `guestAddress` in `slot`.
    ///
    /// SAFETY: KVM keeps `host` and reads and writes through it while the VM
    /// runs: the caller keeps the mapping alive for as long as this VM (see
    /// GuestMemory.register, the only caller).
    /// `logDirty`: KVM records the pages the guest writes (`dirtyLog`).
    public func setMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, readOnly: Bool = false,
                                logDirty: Bool = false) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot,
            flags: (readOnly ? UInt32(KVM_MEM_READONLY) : 0) | (logDirty ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0),
            guest_phys_addr: guestAddress,
            memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: host))
        )
        try KVMError.check("KVM_SET_USER_MEMORY_REGION(slot \(slot), 0x\(String(guestAddress, radix: 16)))",
                           ckvm_set_user_memory_region(fd, &region))
    }

    /// The pages of `slot` (of `pages` pages, registered with `logDirty`)
    /// that the guest wrote since the last call: one bit per page, 64 to a word.
    public func dirtyLog(slot: UInt32, pages: Int) throws(KVMError) -> [UInt64] {
        var bitmap = [UInt64](repeating: 0, count: (pages + 63) / 64)
        try KVMError.check("KVM_GET_DIRTY_LOG(slot \(slot))", bitmap.withUnsafeMutableBufferPointer { ckvm_get_dirty_log(fd, slot, $0.baseAddress) })
        return bitmap
    }

    /// Intel VMX needs three pages of guest-physical space for the real-mode
    /// TSS; other KVMs accept and ignore the call.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        try KVMError.check("KVM_SET_TSS_ADDR", ckvm_set_tss_addr(fd, UInt(address)))
    }

    public func createVCPU(id: Int) throws(KVMError) -> VCPU {
        let vcpufd = try KVMError.check("KVM_CREATE_VCPU(\(id))", ckvm_create_vcpu(fd, UInt(id)))
        return try VCPU(fd: vcpufd, id: id, mmapSize: hypervisor.vcpuMmapSize, vm: self)
    }
}
