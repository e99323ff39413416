import CKVM
import Glibc

/// Why `KVM_RUN` returned, with the data the exit carries (the `VcpuExit`
/// shape of rust-vmm's kvm-ioctls, as a Swift enum).
public enum VCPUExit {
    /// Port I/O. `data` is the bytes in the shared run page: for `out` the
    /// guest's bytes, for `in` the bytes to fill (size × count).
    case io(port: UInt16, isWrite: Bool, size: Int, count: Int, data: UnsafeMutableRawBufferPointer)
    /// An access to guest-physical memory no slot backs.
    case mmio(address: UInt64, isWrite: Bool, data: UnsafeMutableRawBufferPointer)
    case halt
    /// Triple fault (or a guest that KVM otherwise shut down).
    case shutdown
    /// `KVM_EXIT_SYSTEM_EVENT`: the guest asked for shutdown, reset or crash.
    case systemEvent(SystemEvent)
    /// KVM could not continue the guest, e.g. an emulation failure.
    case internalError(suberror: UInt32, data: [UInt64])
    case failEntry(reason: UInt64)
    /// `KVM_RUN` returned EINTR (a kick) or immediate_exit was set.
    case interrupted
    case other(reason: UInt32)
}

/// What a `KVM_EXIT_SYSTEM_EVENT` asks for.
public enum SystemEvent: Sendable, Equatable {
    case shutdown, reset
    case other(UInt32)

    init(_ type: UInt32) {
        switch Int32(type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN: self = .shutdown
        case KVM_SYSTEM_EVENT_RESET: self = .reset
        default: self = .other(type)
        }
    }
}

/// One virtual CPU. It must be run from one thread at a time; `kick()` may be
/// called from any thread.
public final class VCPU: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `runPage` points into an mmap that lives as
    // long as this object. Only `kick()` touches it from other threads, and
    // it writes the single byte KVM documents for that purpose.
    public let fd: Int32
    public let id: Int
    public let vm: VirtualMachine
    /// SAFETY: points into the vCPU's run mapping, valid until deinit; the
    /// buffers `run()` returns point into it too and are valid only until
    /// the next `KVM_RUN` on this vCPU (the caller handles the exit first).
    private let runPage: UnsafeMutablePointer<kvm_run>
    private let mmapSize: Int

    init(fd: Int32, id: Int, mmapSize: Int, vm: VirtualMachine) throws(KVMError) {
        let mapping = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if mapping == MAP_FAILED {
            let e = errno
            close(fd)
            throw KVMError("mmap of vCPU \(id) run structure", errno: e)
        }
        self.fd = fd
        self.id = id
        self.vm = vm
        self.mmapSize = mmapSize
        self.runPage = mapping!.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit {
        munmap(runPage, mmapSize)
        close(fd)
    }

    /// Asks a running (or about to run) `KVM_RUN` to return. Pair with a
    /// signal to the vCPU thread to interrupt a guest that is executing.
    public func requestExit() {
        ckvm_run_set_immediate_exit(runPage, 1)
    }

    /// Installs a no-op handler (without SA_RESTART) for the signal used to
    /// kick vCPU threads, so the signal interrupts KVM_RUN instead of killing us.
    public static func installKickHandler(signal: Int32) {
        _ = ckvm_install_kick_handler(signal)
    }

    /// Lets the kick signal reach the calling thread (call on the vCPU's thread).
    public static func unblockKickSignal(_ signal: Int32) {
        _ = ckvm_unblock_signal(signal)
    }

    /// Tells the guest that the host stopped this vCPU (`KVM_KVMCLOCK_CTRL`:
    /// kvm-clock's PVCLOCK_GUEST_STOPPED flag, set at its next entry), so its
    /// soft-lockup and RCU stall detectors do not take the pause for a hang.
    /// Call while the vCPU is out of `KVM_RUN`. False when the guest has no
    /// kvm-clock (EINVAL) or the host lacks the call.
    @discardableResult
    public func markGuestStopped() -> Bool {
        ckvm_kvmclock_ctrl(fd) == 0
    }

    public func clearExitRequest() {
        ckvm_run_set_immediate_exit(runPage, 0)
    }

    /// Enters the guest once and decodes why it came back.
    public func run() throws(KVMError) -> VCPUExit {
        let result = ckvm_run(fd)
        if result == -EINTR || result == -EAGAIN { return .interrupted }
        try KVMError.check("KVM_RUN(vCPU \(id))", result)
        // SAFETY: the exit's data lies in the run mapping (checked against its
        // size below); the buffers returned are valid until the next KVM_RUN.
        let base = UnsafeMutableRawPointer(runPage)
        switch Int32(runPage.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = ckvm_run_io(runPage)
            let length = Int(io.size) * Int(io.count)
            // SAFETY: KVM places the data inside the run mapping; check anyway
            // so a kernel bug cannot make us read past it.
            guard Int(io.data_offset) + length <= mmapSize else { return .other(reason: UInt32(KVM_EXIT_IO)) }
            let data = UnsafeMutableRawBufferPointer(start: base + Int(io.data_offset), count: length)
            return .io(port: io.port, isWrite: io.direction == KVM_EXIT_IO_OUT, size: Int(io.size), count: Int(io.count), data: data)
        case KVM_EXIT_MMIO:
            let length = min(Int(ckvm_run_mmio_len(runPage)), 8)
            let data = UnsafeMutableRawBufferPointer(start: ckvm_run_mmio_data(runPage), count: length)
            return .mmio(address: ckvm_run_mmio_phys_addr(runPage), isWrite: ckvm_run_mmio_is_write(runPage) != 0, data: data)
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(SystemEvent(ckvm_run_system_event_type(runPage)))
        case KVM_EXIT_INTERNAL_ERROR:
            let n = min(ckvm_run_internal_ndata(runPage), 16)
            return .internalError(suberror: ckvm_run_internal_suberror(runPage), data: (0..<n).map { ckvm_run_internal_data(runPage, $0) })
        case KVM_EXIT_FAIL_ENTRY:
            return .failEntry(reason: ckvm_run_fail_entry_reason(runPage))
        case KVM_EXIT_INTR:
            return .interrupted
        default:
            return .other(reason: runPage.pointee.exit_reason)
        }
    }
}
