import CKVM
import Glibc

/// The open `/dev/kvm` device: capability queries and VM creation.
public final class Hypervisor: Sendable {
    public let fd: Int32
    public let vcpuMmapSize: Int

    public init(path: String = "/dev/kvm") throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { throw KVMUnavailable(path: path, errno: errno) }
        do {
            let version = try KVMError.check("KVM_GET_API_VERSION", ckvm_get_api_version(fd))
            if version != KVM_API_VERSION {
                throw KVMError("KVM_GET_API_VERSION returned \(version), expected \(KVM_API_VERSION)", errno: EINVAL)
            }
            vcpuMmapSize = Int(try KVMError.check("KVM_GET_VCPU_MMAP_SIZE", ckvm_get_vcpu_mmap_size(fd)))
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// `KVM_CHECK_EXTENSION`: 0 when unsupported, else a capability-specific value.
    public func check(capability: Int32) -> Int32 {
        max(0, ckvm_check_extension(fd, capability))
    }

    public func createVM() throws(KVMError) -> VirtualMachine {
        let vmfd = try KVMError.check("KVM_CREATE_VM", ckvm_create_vm(fd, 0))
        return VirtualMachine(fd: vmfd, hypervisor: self)
    }
}
