import Glibc
import SystemPackage

/// Starts a host thread running `body` (Foundation-free; every long-lived
/// thread in svmm comes from here). Returns the thread for joining, or throws
/// naming `purpose` when the system refuses.
@discardableResult
public func startHostThread(_ purpose: String, detached: Bool = false,
                            _ body: @escaping @Sendable () -> Void) throws(HostError) -> pthread_t {
    final class Box: @unchecked Sendable {
        // SAFETY (@unchecked Sendable): immutable after init; the closure is Sendable.
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    // SAFETY: the box is retained once here and released exactly once: by
    // the new thread (takeRetainedValue), or below if the thread never starts.
    let box = Unmanaged.passRetained(Box(body))
    var t = pthread_t()
    // 1 MiB stacks, not glibc's 8 MiB: svmm's threads run shallow loops, and
    // a stack mapping under 2 MiB can never be backed (or collapsed by
    // khugepaged) into a transparent huge page, which would add 2 MiB of
    // resident memory per thread to the VMM's footprint.
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    pthread_attr_setstacksize(&attr, 1 << 20)
    let r = pthread_create(&t, &attr, { arg in
        Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, box.toOpaque())
    if r != 0 {
        box.release()
        throw HostError("pthread_create for \(purpose)", Errno(rawValue: r))
    }
    if detached { pthread_detach(t) }
    return t
}
