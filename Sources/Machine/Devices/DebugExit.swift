import VMCore

/// QEMU's isa-debug-exit as kvm-unit-tests configures it (iobase 0xf4,
/// iosize 4): a write of VALUE ends the run, and svmm exits with QEMU's
/// status, (VALUE << 1) | 1, as the shell sees it (its low 8 bits).
public final class DebugExit: BusDevice {
    public static let port: UInt16 = 0xf4
    public static let size: UInt16 = 4
    private let onExit: @Sendable (UInt32) -> Void

    public init(onExit: @escaping @Sendable (UInt32) -> Void) { self.onExit = onExit }

    /// The process status a written value gives (a write to any of the four ports).
    public static func status(_ value: UInt32) -> Int32 { Int32(truncatingIfNeeded: (value << 1 | 1) & 0xFF) }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0xFF)
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        var value: UInt32 = 0
        for (i, byte) in data.prefix(4).enumerated() { value |= UInt32(byte) << (8 * i) }
        onExit(value)
    }
}
