import Glibc
import KVM
import Synchronization

/// A host thread that owns one vCPU and runs `KVM_RUN` on it. A vCPU stays on
/// one thread for its life, so it can be kicked out of the guest with a signal
/// to that thread plus `immediate_exit` (the Firecracker/kvmtool protocol).
public final class VCPUThread: Sendable {
    public static let kickSignal = SIGUSR1
    public let vcpu: VCPU
    private let body: @Sendable (VCPU) -> Void
    private let thread = Mutex<pthread_t?>(nil)
    private let stopping = Atomic<Bool>(false)

    public init(vcpu: VCPU, body: @escaping @Sendable (VCPU) -> Void) {
        self.vcpu = vcpu
        self.body = body
        VCPU.installKickHandler(signal: Self.kickSignal)
    }

    /// True once `stop()` was called; the run loop checks it after every exit.
    public var shouldStop: Bool { stopping.load(ordering: .acquiring) }

    public func start() throws {
        let t = try startHostThread("vCPU \(vcpu.id)") { [self] in
            VCPU.unblockKickSignal(VCPUThread.kickSignal)
            body(vcpu)
        }
        thread.withLock { $0 = t }
    }

    /// Asks the vCPU to leave the guest and its loop to end. Safe from any thread.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        vcpu.requestExit()
        if let t = thread.withLock({ $0 }) { pthread_kill(t, Self.kickSignal) }
    }

    public func join() {
        if let t = thread.withLock({ $0 }) { pthread_join(t, nil) }
    }
}
