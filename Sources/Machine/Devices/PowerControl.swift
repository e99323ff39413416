import VMCore
/// What the guest asked the board to do.
public enum PowerRequest: Sendable, Equatable {
    case powerOff
    case reset
}

/// The hardware-reduced ACPI sleep control and reset registers (see
/// `ACPITables`), plus the i8042 "pulse reset line" command (0xFE to port
/// 0x64) that Linux falls back to for reboot.
public final class PowerControl: BusDevice {
    public static let i8042Command: UInt16 = 0x64
    public static let i8042Data: UInt16 = 0x60
    private let request: @Sendable (PowerRequest) -> Void

    public init(request: @escaping @Sendable (PowerRequest) -> Void) {
        self.request = request
    }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        // Sleep status and the i8042 status/data read as 0: nothing pending,
        // no keyboard data (so a driver's poll loop ends at once).
        data.initializeMemory(as: UInt8.self, repeating: 0)
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        let port = UInt16(truncatingIfNeeded: address)
        guard let v = data.first else { return }
        switch port {
        case ACPITables.sleepControlPort:
            // SLP_EN (bit 5) with SLP_TYP (bits 2–4) = the \_S5 value: soft-off.
            if v & 0x20 != 0 && (v >> 2) & 0x7 == ACPITables.s5SleepType { request(.powerOff) }
        case ACPITables.resetPort:
            if v == ACPITables.resetValue { request(.reset) }
        case Self.i8042Command:
            if v == 0xFE { request(.reset) }
        default:
            break
        }
    }
}
