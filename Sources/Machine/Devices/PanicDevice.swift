import VMCore
/// QEMU's pvpanic ISA device (docs/specs/pvpanic.rst): the guest writes
/// PVPANIC_PANICKED (bit 0) when it panics, so svmm can report a panic as a
/// panic rather than as the reboot that panic=-1 turns it into. Described in
/// the DSDT as QEMU0001; Linux's pvpanic-mmio driver binds to it.
public final class PanicDevice: BusDevice {
    public static let port: UInt16 = 0x505
    static let panicked: UInt8 = 1 << 0
    static let crashLoaded: UInt8 = 1 << 1
    private let onPanic: @Sendable () -> Void

    public init(onPanic: @escaping @Sendable () -> Void) { self.onPanic = onPanic }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        // The events this device supports.
        data.initializeMemory(as: UInt8.self, repeating: 0)
        if !data.isEmpty { data[0] = Self.panicked | Self.crashLoaded }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        if let v = data.first, v & Self.panicked != 0 { onPanic() }
    }
}
