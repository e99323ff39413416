import CHost
import Glibc
import SystemPackage

/// An eventfd(2): a counter KVM and svmm's threads signal each other through
/// (ioeventfd: guest → device thread; irqfd: device thread → guest interrupt).
public final class EventFD: Sendable {
    public let fd: Int32

    public init() throws(HostError) {
        let fd = chost_eventfd()
        guard fd >= 0 else { throw HostError("eventfd", Errno(rawValue: -fd)) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Adds 1 to the counter (wakes a waiter, or raises an irqfd's GSI).
    public func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Reads and clears the counter; 0 when nothing was signalled.
    @discardableResult
    public func drain() -> UInt64 {
        var value: UInt64 = 0
        return read(fd, &value, 8) == 8 ? value : 0
    }
}
