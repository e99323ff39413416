import VMCore
import Synchronization

/// QEMU's fw_cfg through its legacy ports, as kvm-unit-tests reads it
/// (QEMU docs/specs/fw_cfg.rst): a 16-bit write of a key to the selector
/// (0x510) chooses an item, byte reads from the data port (0x511) return its
/// bytes in order, little-endian, and 0 past its end. The items: the
/// signature "QEMU" (0x00), the interface ID (0x01: the traditional
/// interface only), the RAM size (0x03, 64-bit), the number of CPUs (0x05,
/// 16-bit) and the most CPUs (0x0f, 16-bit). No DMA, no file directory.
public final class FirmwareConfig: BusDevice {
    public static let selectorPort: UInt16 = 0x510
    public static let dataPort: UInt16 = 0x511
    public enum Key: UInt16 { case signature = 0x00, id = 0x01, ramSize = 0x03, cpus = 0x05, maxCPUs = 0x0f }

    private let items: [UInt16: [UInt8]]
    private let cursor = Mutex<(item: UInt16, offset: Int)>((0, 0))

    public init(cpus: Int, ramBytes: UInt64) {
        items = [
            Key.signature.rawValue: Array("QEMU".utf8),
            Key.id.rawValue: LittleEndian.bytes(1, count: 4),
            Key.ramSize.rawValue: LittleEndian.bytes(ramBytes, count: 8),
            Key.cpus.rawValue: LittleEndian.bytes(UInt64(cpus), count: 2),
            Key.maxCPUs.rawValue: LittleEndian.bytes(UInt64(cpus), count: 2),
        ]
    }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
        guard address == UInt64(Self.dataPort), data.count == 1 else { return }
        data[0] = cursor.withLock { c in
            defer { c.offset += 1 }
            guard let item = items[c.item], c.offset < item.count else { return 0 }
            return item[c.offset]
        }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        guard address == UInt64(Self.selectorPort), data.count == 2 else { return }
        let key = UInt16(data[0]) | UInt16(data[1]) << 8
        cursor.withLock { $0 = (key, 0) }
    }
}
