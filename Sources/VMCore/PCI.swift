import Synchronization

/// PCI configuration mechanism #1 (PCI Local Bus spec 3.0 §3.2.2.3.2): the
/// address register at 0xCF8 and the data window at 0xCFC–0xCFF. Bus 0 holds
/// the host bridge at 00:00.0 and the board's functions at 00:01.0, 00:02.0, …
/// Every other function reads as absent (all ones), which is how a guest
/// learns a slot is empty.
public final class PCIHostBridge: BusDevice {
    public static let addressPort: UInt16 = 0xCF8
    public static let dataPort: UInt16 = 0xCFC
    public static let vendor: UInt16 = 0x8086
    public static let device: UInt16 = 0x0D57      // an Intel host bridge id, as Firecracker uses
    static let enable: UInt32 = 1 << 31

    let address = Mutex<UInt32>(0)
    /// The host bridge's 256-byte type-0 configuration header.
    let config: [UInt8]

    /// Functions at devices 1, 2, … of bus 0 (function 0 each).
    let functions: [any PCIFunction]

    public init(functions: [any PCIFunction] = []) {
        self.functions = functions
        var c = [UInt8](repeating: 0, count: 256)
        c.putLittleEndian(UInt64(Self.vendor), count: 2, at: 0x00)
        c.putLittleEndian(UInt64(Self.device), count: 2, at: 0x02)
        c.putLittleEndian(0x06_0000, count: 3, at: 0x09)   // class: bridge, host bridge, prog-if 0
        c[0x0E] = 0x00                               // header type 0, single function
        config = c
    }

    public func read(address a: UInt64, data: UnsafeMutableRawBufferPointer) {
        let port = UInt16(truncatingIfNeeded: a)
        if port == Self.addressPort && data.count == 4 {
            LittleEndian.fill(data, with: UInt64(address.withLock { $0 }))
            return
        }
        guard port >= Self.dataPort else {
            data.initializeMemory(as: UInt8.self, repeating: 0xFF)
            return
        }
        let cf8 = address.withLock { $0 }
        let offset = Int(cf8 & 0xFC) + Int(port - Self.dataPort)
        if let function = function(cf8, offset, data.count) {
            return function.readConfig(offset, data)
        }
        // Bus 0, device 0, function 0: the host bridge.
        let present = cf8 & Self.enable != 0 && cf8 & 0x00FF_FF00 == 0
        for i in 0..<data.count {
            data[i] = present && offset + i < config.count ? config[offset + i] : 0xFF
        }
    }

    /// The function the address register selects, if it is one of the
    /// board's and the access stays inside its configuration space.
    func function(_ cf8: UInt32, _ offset: Int, _ count: Int) -> (any PCIFunction)? {
        guard cf8 & Self.enable != 0, cf8 & 0x00FF_0000 == 0, cf8 & 0x700 == 0, offset + count <= 256 else { return nil }
        let device = Int(cf8 >> 11) & 0x1F
        return device >= 1 && device <= functions.count ? functions[device - 1] : nil
    }

    public func write(address a: UInt64, data: UnsafeRawBufferPointer) {
        let port = UInt16(truncatingIfNeeded: a)
        if port >= Self.dataPort {
            let cf8 = address.withLock { $0 }
            let offset = Int(cf8 & 0xFC) + Int(port - Self.dataPort)
            if let function = function(cf8, offset, data.count) { function.writeConfig(offset, data) }
            return   // the host bridge's own registers are read-only here
        }
        guard port == Self.addressPort, data.count == 4 else { return }
        let v = UInt32(truncatingIfNeeded: LittleEndian.value(data))
        address.withLock { $0 = v }
    }
}
