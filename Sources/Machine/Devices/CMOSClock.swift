import VMCore
import Glibc
import Synchronization

/// The PC's MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71
/// (data), read-only: the guest reads the host's current UTC time in BCD,
/// 24-hour mode, never "update in progress". Without it every read returns
/// 0xFF, which Linux takes as an update that never ends.
public final class CMOSClock: BusDevice {
    public static let indexPort: UInt16 = 0x70
    public static let dataPort: UInt16 = 0x71
    let index = Mutex<UInt8>(0)
    private let now: @Sendable () -> time_t

    public init(now: @escaping @Sendable () -> time_t = { time(nil) }) { self.now = now }

    static func bcd(_ v: Int32) -> UInt8 { UInt8((v / 10) << 4 | (v % 10)) }

    /// The register `index` holds at time `t` (seconds since the epoch, UTC).
    static func register(_ index: UInt8, at t: time_t) -> UInt8 {
        var t = t
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        switch index {
        case 0x00: return bcd(tm.tm_sec)
        case 0x02: return bcd(tm.tm_min)
        case 0x04: return bcd(tm.tm_hour)
        case 0x06: return bcd(tm.tm_wday + 1)
        case 0x07: return bcd(tm.tm_mday)
        case 0x08: return bcd(tm.tm_mon + 1)
        case 0x09: return bcd(tm.tm_year % 100)
        case 0x32: return bcd((tm.tm_year + 1900) / 100)  // century
        case 0x0A: return 0x26      // status A: 32.768 kHz, 1024 Hz; UIP clear
        case 0x0B: return 0x02      // status B: 24-hour, BCD, no interrupts
        case 0x0C: return 0x00      // status C: no interrupt flags
        case 0x0D: return 0x80      // status D: valid RAM and time
        default: return 0x00
        }
    }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        let port = UInt16(truncatingIfNeeded: address)
        data.initializeMemory(as: UInt8.self, repeating: 0)
        guard !data.isEmpty else { return }
        let i = index.withLock { $0 }
        data[0] = port == Self.dataPort ? Self.register(i, at: now()) : i
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        let port = UInt16(truncatingIfNeeded: address)
        guard let v = data.first, port == Self.indexPort else { return }
        index.withLock { $0 = v & 0x7F }   // bit 7 masks NMIs
    }
}

extension CMOSClock: SnapshotDevice {
    struct SavedState: Codable { var index: UInt8 }

    /// The index register alone: the clock reads the host's time.
    public func saveState() throws(DeviceStateError) -> [UInt8] {
        try DeviceStateCoding.encode(SavedState(index: index.withLock { $0 }))
    }

    public func restoreState(_ bytes: [UInt8]) throws(DeviceStateError) {
        let s = try DeviceStateCoding.decode(SavedState.self, bytes, device: "cmos-rtc")
        index.withLock { $0 = s.index & 0x7F }
    }
}

