import VMCore

/// The `test-devices` fuzz target's board (svmm-fuzz, BoardTargets.swift):
/// one set of kvm-unit-tests' devices per process, as a board has them;
/// their state carries from input to input, as a guest's accesses would.
public final class TestDevicesFuzz: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): libFuzzer calls back on one thread.
    public static let shared = TestDevicesFuzz()
    let memory: GuestMemory
    var pio = Bus(), mmio = Bus()
    /// Each range: its bus (true: ports), first address, length.
    var ranges: [(ports: Bool, first: UInt64, count: UInt64)] = []
    /// The keyboard controller (the board's own, with `keyboard`): keys arrive between accesses.
    let keyboard = I8042(setIRQ: { _ in }, reset: {})

    init() {
        memory = try! GuestMemory(size: 1 << 20)
        let memory = self.memory
        let pci = PCITestDevice(memoryBase: Layout.testDeviceBAR, portBase: Layout.testDevicePorts)
        let testdev = PCTestDevice(setIRQ: { line, _ in precondition(line < 24, "an IRQ line past 23") },
                                   flushPage: { PCTestDevice.dropMappings(of: $0, in: memory) })
        func add(_ d: any BusDevice, ports: Bool, _ first: UInt64, _ count: UInt64) {
            if ports { pio.register(d, first...(first + count - 1)) } else { mmio.register(d, first...(first + count - 1)) }
            ranges.append((ports, first, count))
        }
        add(FirmwareConfig(cpus: 4, ramBytes: 1 << 30), ports: true, 0x510, 2)
        add(PMTimer(), ports: true, UInt64(PMTimer.port), 4)
        add(DebugExit { _ in }, ports: true, UInt64(DebugExit.port), UInt64(DebugExit.size))
        add(testdev, ports: true, UInt64(PCTestDevice.latchPort), 12)
        add(testdev, ports: true, UInt64(PCTestDevice.irqPort), UInt64(PCTestDevice.irqLines))
        add(testdev, ports: false, PCTestDevice.ioRAM, UInt64(PCTestDevice.ioRAMSize))
        add(pci.memoryWindow, ports: false, Layout.testDeviceBAR, PCITestDevice.memorySize)
        add(pci.portWindow, ports: true, UInt64(Layout.testDevicePorts), PCITestDevice.portSize)
        add(PCIHostBridge(functions: [pci]), ports: true, UInt64(PCIHostBridge.addressPort), 8)
        add(keyboard, ports: true, UInt64(I8042.dataPort), 1)
        add(keyboard, ports: true, UInt64(I8042.commandPort), 1)
    }

    /// One input (svmm-fuzz's `test-devices` target; its format there).
    public func run(_ input: UnsafeRawBufferPointer) {
        var data = [UInt8](repeating: 0, count: 8)
        var at = 0
        while at + 8 <= input.count {
            let op = input[at]
            let width = 1 << Int((op >> 1) & 3)
            let range = ranges[Int(op >> 3) % ranges.count]
            let offset = UInt64(input[at + 1]) | UInt64(input[at + 2]) << 8
            // Any offset in the range, the last bytes included: a wide access may run past its end.
            let address = range.first + offset % range.count
            for i in 0..<8 { data[i] = i < 4 ? input[at + 3 + i] : 0 }
            let isWrite = op & 1 == 0
            let bus = range.ports ? pio : mmio
            data.withUnsafeMutableBytes { bytes in
                _ = bus.access(address, isWrite: isWrite, data: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<width]))
            }
            // The PM timer's 32-bit read never shows more than 24 bits.
            if !isWrite && width == 4 && address == UInt64(PMTimer.port) { precondition(data[3] == 0, "a PM timer value past 24 bits") }
            // [7] bit 0: Ctrl-Alt-Del typed after this access.
            if input[at + 7] & 1 != 0 { keyboard.sendCtrlAltDel() }
            at += 8
        }
    }
}
