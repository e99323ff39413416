import VMCore
import Synchronization

/// QEMU's pci-testdev (1b36:0005), which kvm-unit-tests' pci test drives
/// (facts from QEMU's hw/misc/pci-testdev.c): BAR 0 is 4 KiB of memory
/// space, BAR 1 256 I/O ports, both assigned by svmm as firmware would (the
/// tests assign none) and decoded there. Each holds three tests
/// ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd": "mmio-…" in
/// BAR 0, "portio-…" in BAR 1). A byte written at offset 0 selects test N
/// of that BAR (N ≥ 3: none) and zeroes its count; reads then return the
/// test's header byte by byte: test@0, width@1 (1), offset@4, data@8,
/// count@12, name@16, 0 past it. A write at the header's offset counts
/// one (with "datamatch", only of the header's data byte). svmm counts every
/// such write itself (no ioeventfd), which kvm-unit-tests accepts for all
/// three (a count of 0 or of the writes made).
public final class PCITestDevice: PCIFunction, @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `state` is a Mutex; the rest is immutable.
    public static let vendor: UInt16 = 0x1b36, device: UInt16 = 0x0005
    public static let memorySize: UInt64 = 4096, portSize: UInt64 = 256
    static let testsPerBAR = 3
    static let names = ["no-eventfd", "wildcard-eventfd", "datamatch-eventfd"]
    static let dataMatch: UInt8 = 0xFA, noMatch: UInt8 = 0xCE

    public let memoryBase: UInt64, portBase: UInt16
    /// The two BARs on the buses (memory, ports).
    public private(set) var memoryWindow: Window!, portWindow: Window!

    struct State {
        var command: UInt16 = 0
        var bars: (UInt32, UInt32)
        var current = -1
        var headers: [[UInt8]]
    }
    private let state: Mutex<State>

    public init(memoryBase: UInt64, portBase: UInt16) {
        precondition(memoryBase % Self.memorySize == 0 && memoryBase < 1 << 32 && UInt64(portBase) % Self.portSize == 0)
        self.memoryBase = memoryBase
        self.portBase = portBase
        let headers = (0..<(2 * Self.testsPerBAR)).map { i -> [UInt8] in
            let mmio = i < Self.testsPerBAR
            let test = i % Self.testsPerBAR
            let name = (mmio ? "mmio-" : "portio-") + Self.names[test]
            let offset = (mmio ? 2048 : 128) + UInt64(i)
            var h: [UInt8] = [UInt8(i), 1, 0, 0] + le(offset, 4)
            h += [test == 1 ? Self.noMatch : Self.dataMatch, 0, 0, 0] + le(0, 4)
            return h + Array(name.utf8) + [0]
        }
        state = Mutex(State(bars: (UInt32(memoryBase), UInt32(portBase) | 1), headers: headers))
        memoryWindow = Window(self, bar: 0)
        portWindow = Window(self, bar: 1)
    }

    /// One BAR's accesses, split into bytes as QEMU's (1-byte) implementation splits them.
    public final class Window: BusDevice {
        unowned let owner: PCITestDevice
        let bar: Int
        init(_ owner: PCITestDevice, bar: Int) { self.owner = owner; self.bar = bar }
        var base: UInt64 { bar == 0 ? owner.memoryBase : UInt64(owner.portBase) }

        public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
            let at = Int(address - base)
            owner.state.withLock { s in
                for i in 0..<data.count {
                    // QEMU returns 0 for the header's last byte too (its check is addr + 1 >= size).
                    guard s.current >= 0, at + i + 1 < s.headers[s.current].count else { data[i] = 0; continue }
                    data[i] = s.headers[s.current][at + i]
                }
            }
        }

        public func write(address: UInt64, data: UnsafeRawBufferPointer) {
            let at = Int(address - base)
            owner.state.withLock { s in
                for i in 0..<data.count { PCITestDevice.write(&s, bar: bar, offset: at + i, byte: data[i]) }
            }
        }
    }

    static func write(_ s: inout State, bar: Int, offset: Int, byte: UInt8) {
        if offset == 0 {
            s.current = -1
            guard Int(byte) < testsPerBAR else { return }
            s.current = bar * testsPerBAR + Int(byte)
            s.headers[s.current].replaceSubrange(12..<16, with: le(0, 4))
            return
        }
        guard s.current >= 0 else { return }
        let h = s.headers[s.current]
        guard offset == Int(LittleEndian.load(UInt32.self, from: h, at: 4)) else { return }
        if s.current % testsPerBAR != 1 && byte != h[8] { return }    // datamatch: only the header's data
        let count = LittleEndian.load(UInt32.self, from: h, at: 12) &+ 1
        s.headers[s.current].replaceSubrange(12..<16, with: le(UInt64(count), 4))
    }

    // MARK: Configuration space

    public func readConfig(_ offset: Int, _ data: UnsafeMutableRawBufferPointer) {
        let (command, bars) = state.withLock { ($0.command, $0.bars) }
        var c = [UInt8](repeating: 0, count: 64)
        c.putLittleEndian(UInt64(Self.vendor), count: 2, at: 0x00)
        c.putLittleEndian(UInt64(Self.device), count: 2, at: 0x02)
        c.putLittleEndian(UInt64(command), count: 2, at: 0x04)
        c[0x0B] = 0xFF                                              // class: other (PCI_CLASS_OTHERS)
        c.putLittleEndian(UInt64(bars.0), count: 4, at: 0x10)
        c.putLittleEndian(UInt64(bars.1), count: 4, at: 0x14)
        c.putLittleEndian(0x1AF4, count: 2, at: 0x2C)               // subsystem, as QEMU's defaults
        c.putLittleEndian(0x1100, count: 2, at: 0x2E)
        for i in 0..<data.count { data[i] = offset + i < c.count ? c[offset + i] : 0 }
    }

    public func writeConfig(_ offset: Int, _ data: UnsafeRawBufferPointer) {
        let value = UInt32(truncatingIfNeeded: LittleEndian.value(data))
        state.withLock { s in
            switch (offset, data.count) {
            case (0x04, 2), (0x04, 4): s.command = UInt16(truncatingIfNeeded: value) & 0x7   // I/O, memory, bus master
            // Sizing writes all ones and reads back the size mask; svmm
            // decodes each BAR at the address it assigned.
            case (0x10, 4): s.bars.0 = value & ~UInt32(Self.memorySize - 1)
            case (0x14, 4): s.bars.1 = value & ~UInt32(Self.portSize - 1) & 0xFFFF | 1
            default: break
            }
        }
    }
}
