import VMCore
import Dispatch
import Synchronization

/// A one-purpose device for measuring boot time (Firecracker's boot timer):
/// the first time the guest writes `magic` to the MMIO byte at `address`, it
/// records the time since `start`. The test guest's /init writes it right
/// after its marker line (`devmem 0xd0000000 8 123`).
public final class BootMarker: BusDevice {
    public static let address = Layout.bootMarker
    public static let magic: UInt8 = 123
    private let start: UInt64
    private let reached = Mutex<UInt64?>(nil)
    private let onReached: @Sendable (UInt64) -> Void

    /// - Parameters:
    ///   - start: `DispatchTime.now().uptimeNanoseconds` when svmm started.
    ///   - onReached: called once with the nanoseconds since `start`.
    public init(start: UInt64, onReached: @escaping @Sendable (UInt64) -> Void) {
        self.start = start
        self.onReached = onReached
    }

    public var nanosecondsToMarker: UInt64? { reached.withLock { $0 } }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        guard data.first == Self.magic else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        let first = reached.withLock { r -> UInt64? in
            guard r == nil else { return nil }
            r = now - start
            return r
        }
        if let first { onReached(first) }
    }
}
