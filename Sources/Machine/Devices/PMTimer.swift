import VMCore
import Glibc

/// The ACPI power-management timer (ACPI 6.4 §4.8.3.3): a 24-bit counter at
/// 3.579545 MHz, read with `inl` from the port the FADT's PM_TMR_BLK names;
/// here the host's CLOCK_MONOTONIC scaled to that rate, so it never goes
/// backwards and wraps every 2^24 ticks (about 4.7 s). Writes are ignored.
public final class PMTimer: BusDevice {
    /// As QEMU's ICH9 places it (PMBASE 0x600 + 8); svmm's power control
    /// registers take 0x600-0x602.
    public static let port: UInt16 = 0x608
    public static let hertz: UInt64 = 3_579_545

    public init() {}

    /// The counter at `nanoseconds` of the monotonic clock.
    public static func ticks(at nanoseconds: UInt64) -> UInt32 {
        // Whole seconds and the rest apart, so the product stays in 64 bits.
        let seconds = nanoseconds / 1_000_000_000, rest = nanoseconds % 1_000_000_000
        return UInt32(truncatingIfNeeded: seconds &* hertz &+ rest * hertz / 1_000_000_000) & 0xFF_FFFF
    }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        let value = Self.ticks(at: UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec))
        let shift = 8 * Int(address - UInt64(Self.port))
        for i in 0..<data.count { data[i] = shift + 8 * i < 32 ? UInt8(truncatingIfNeeded: value >> (shift + 8 * i)) : 0 }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {}
}
