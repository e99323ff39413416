import Glibc
import Synchronization
import Testing
@testable import Machine
@testable import Stats
@testable import VMCore
@testable import Virtio

/// Records MSI-X traffic instead of going through KVM.
final class RecordingMSIX: MSIXDelivery, @unchecked Sendable {
    let log = Mutex<[String]>([])
    func route(vector: Int, message: MSIXMessage?) {
        log.withLock { $0.append("route \(vector) " + (message.map { "0x\(String($0.address, radix: 16)) \($0.data)" } ?? "off")) }
    }
    func fire(vector: Int) { log.withLock { $0.append("fire \(vector)") } }
    var fired: [String] { log.withLock { $0.filter { $0.hasPrefix("fire") } } }
}

/// Drives a VirtioPCIDevice the way Linux's virtio_pci_modern does.
struct PCIDriver {
    let f: VirtioPCIDevice
    func cfg32(_ o: Int) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { f.readConfig(o, $0) }
        return v
    }
    func cfg8(_ o: Int) -> UInt8 {
        var v: UInt8 = 0
        withUnsafeMutableBytes(of: &v) { f.readConfig(o, $0) }
        return v
    }
    func setCfg(_ o: Int, _ value: UInt32, size: Int = 4) {
        var v = value
        withUnsafeBytes(of: &v) { f.writeConfig(o, UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
    }
    func bar<T: FixedWidthInteger>(_ o: Int, _: T.Type = T.self) -> T {
        var v = T.zero
        withUnsafeMutableBytes(of: &v) { f.read(address: f.barAddress + UInt64(o), data: $0) }
        return v
    }
    func setBar<T: FixedWidthInteger>(_ o: Int, _ value: T) {
        var v = value
        withUnsafeBytes(of: &v) { f.write(address: f.barAddress + UInt64(o), data: $0) }
    }

    /// Feature negotiation and queue setup for each queue, then DRIVER_OK.
    func bringUp(features: UInt64, queues: [(desc: UInt64, avail: UInt64, used: UInt64, size: UInt16)], vectors: Bool = true) {
        setBar(0x14, UInt8(0))
        setBar(0x14, UInt8(VirtioStatus.acknowledge | VirtioStatus.driver))
        setBar(0x08, UInt32(0)); setBar(0x0C, UInt32(truncatingIfNeeded: features))
        setBar(0x08, UInt32(1)); setBar(0x0C, UInt32(truncatingIfNeeded: features >> 32))
        setBar(0x14, UInt8(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK))
        if vectors { setBar(0x10, UInt16(0)) }
        for (i, q) in queues.enumerated() {
            setBar(0x16, UInt16(i))
            setBar(0x18, q.size)
            if vectors { setBar(0x1A, UInt16(i + 1)) }
            setBar(0x20, UInt32(truncatingIfNeeded: q.desc)); setBar(0x24, UInt32(truncatingIfNeeded: q.desc >> 32))
            setBar(0x28, UInt32(truncatingIfNeeded: q.avail)); setBar(0x2C, UInt32(truncatingIfNeeded: q.avail >> 32))
            setBar(0x30, UInt32(truncatingIfNeeded: q.used)); setBar(0x34, UInt32(truncatingIfNeeded: q.used >> 32))
            setBar(0x1C, UInt16(1))
        }
        setBar(0x14, UInt8(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK))
    }

    /// Enables MSI-X and programs every vector unmasked.
    func enableMSIX() {
        setCfg(PCICapabilities.msix + 2, 0x8000, size: 2)
        for v in 0..<f.vectors {
            setBar(VirtioPCIDevice.tableOffset + 16 * v, UInt32(0xFEE0_0000))
            setBar(VirtioPCIDevice.tableOffset + 16 * v + 8, UInt32(0x40 + v))
            setBar(VirtioPCIDevice.tableOffset + 16 * v + 12, UInt32(0))
        }
    }
}

@Suite struct VirtioPCITests {
    let memory: GuestMemory
    let msix = RecordingMSIX()
    init() throws { memory = try GuestMemory(size: 16 << 20) }

    func device(_ d: any VirtioDevice) throws -> VirtioPCIDevice {
        let msix = self.msix
        return try VirtioPCIDevice(device: d, barAddress: 0xE000_0000, memory: memory) { _ in msix }
    }

    @Test func configurationSpaceIdentifiesAModernDeviceAndItsCapabilities() throws {
        let p = PCIDriver(f: try device(VirtioRNG()))
        #expect(p.cfg32(0) == 0x1044_1AF4)                       // vendor 0x1af4, device 0x1040 + 4
        #expect(p.cfg8(0x08) == 1)                               // revision 1
        #expect(p.cfg32(0x04) >> 16 & 0x10 != 0)                 // capabilities list
        // Walk the list: common, notify, ISR, device, PCI cfg (vendor caps), then MSI-X.
        var types: [UInt8] = [], at = Int(p.cfg8(0x34)), msix = 0
        while at != 0 {
            if p.cfg8(at) == 0x09 { types.append(p.cfg8(at + 3)) } else if p.cfg8(at) == 0x11 { msix = at }
            at = Int(p.cfg8(at + 1))
        }
        #expect(types == [1, 2, 3, 4, 5])
        #expect(msix != 0 && p.cfg32(msix) >> 16 & 0x7FF == 1)  // 2 vectors: config + 1 queue
        #expect(p.cfg32(0x50 + 16) == 4)                        // notify_off_multiplier
    }

    @Test func theBARSizesLikeAPCIBARAndKeepsItsAddress() throws {
        let p = PCIDriver(f: try device(VirtioRNG()))
        #expect(p.cfg32(0x10) == 0xE000_0000)
        p.setCfg(0x10, 0xFFFF_FFFF)
        #expect(p.cfg32(0x10) == ~UInt32(VirtioPCIDevice.barSize - 1))   // 32 KiB, 32-bit memory BAR
        p.setCfg(0x10, 0xE000_0000)
        #expect(p.cfg32(0x10) == 0xE000_0000)
        p.setCfg(0x00, 0x1234_5678)                                       // ids are read-only
        #expect(p.cfg32(0) == 0x1044_1AF4)
    }

    @Test func featuresOKIsRefusedForUnofferedFeaturesOrWithoutVersion1() throws {
        let p = PCIDriver(f: try device(VirtioRNG()))
        p.setBar(0x00, UInt32(1))
        #expect(p.bar(0x04, UInt32.self) == 1)                               // VERSION_1 offered (bit 32)
        p.setBar(0x14, UInt8(3)); p.setBar(0x08, UInt32(0)); p.setBar(0x0C, UInt32(1 << 29))
        p.setBar(0x14, UInt8(3 | 8))
        #expect(p.bar(0x14, UInt8.self) & 8 == 0)                             // no VERSION_1: refused
        p.setBar(0x14, UInt8(0))
        p.bringUp(features: VirtioFeature.version1 | 1 << 40, queues: [])
        #expect(p.bar(0x14, UInt8.self) & 8 == 0)                             // bit 40 was never offered
    }

    @Test func entropyFillsTheGuestsBuffersAndInterruptsThroughMSIX() throws {
        let f = try device(VirtioRNG())
        let p = PCIDriver(f: f)
        let d = TestDriver(memory: memory, size: 8)
        p.enableMSIX()
        p.bringUp(features: VirtioFeature.version1 | VirtioFeature.eventIndex,
                  queues: [(d.desc, d.avail, d.used, 8)])
        #expect(f.status & VirtioStatus.driverOK != 0)
        try memory.fill(0, at: 0x100000, count: 4096)
        try d.setDescriptor(0, address: 0x100000, length: 4096, flags: 2)
        try d.makeAvailable(0)
        p.setBar(VirtioPCIDevice.notifyOffset, UInt16(0))                     // a notify that exited to svmm
        #expect(f.notifyEvents[0].drain() >= 1)
        f.service(queue: 0)
        let element = try d.usedElement(0)
        #expect(d.usedIdx == 1 && element == (0, 4096))
        let bytes = try memory.read(at: 0x100000, count: 4096)
        #expect(Set(bytes).count > 200)                                        // random, not zeros
        #expect(msix.fired == ["fire 1"])                                      // the queue's vector
    }

    @Test func aMaskedVectorIsPendingInThePBAUntilUnmasked() throws {
        let f = try device(VirtioRNG())
        let p = PCIDriver(f: f)
        p.enableMSIX()
        p.setBar(VirtioPCIDevice.tableOffset + 16 + 12, UInt32(1))            // mask vector 1
        f.signal(vector: 1)
        #expect(msix.fired.isEmpty)
        #expect(p.bar(VirtioPCIDevice.pbaOffset, UInt64.self) == 0b10)
        p.setBar(VirtioPCIDevice.tableOffset + 16 + 12, UInt32(0))            // unmask: delivered now
        #expect(msix.fired == ["fire 1"])
        #expect(p.bar(VirtioPCIDevice.pbaOffset, UInt64.self) == 0)
        p.setCfg(PCICapabilities.msix + 2, 0xC000, size: 2)                 // function mask
        f.signal(vector: 0)
        #expect(msix.fired == ["fire 1"])
        p.setCfg(PCICapabilities.msix + 2, 0x8000, size: 2)
        #expect(msix.fired == ["fire 1", "fire 0"])
    }

    /// A vector is routed only while it may deliver: every message write made
    /// while it is masked (as a driver rewrites one) leaves it off, and the
    /// unmask routes the whole new message. An irqfd signalled behind svmm's
    /// back (vhost-net) thus never delivers a half-written message.
    @Test func aVectorIsRoutedOnlyWhileUnmaskedWithItsWholeMessage() throws {
        let f = try device(VirtioRNG())
        let p = PCIDriver(f: f)
        func routes(_ v: Int) -> [String] { msix.log.withLock { $0.filter { $0.hasPrefix("route \(v) ") } } }
        p.setCfg(PCICapabilities.msix + 2, 0x8000, size: 2)                 // MSI-X on, every vector masked
        #expect(routes(1) == ["route 1 off"])
        p.setBar(VirtioPCIDevice.tableOffset + 16, UInt32(0xFEE0_0000))
        p.setBar(VirtioPCIDevice.tableOffset + 16 + 8, UInt32(0x41))
        #expect(Set(routes(1)) == ["route 1 off"])                             // the message is written, masked
        p.setBar(VirtioPCIDevice.tableOffset + 16 + 12, UInt32(0))            // unmask
        #expect(routes(1).last == "route 1 0xfee00000 65")
        p.setBar(VirtioPCIDevice.tableOffset + 16 + 12, UInt32(1))            // mask, move to another CPU and vector
        p.setBar(VirtioPCIDevice.tableOffset + 16, UInt64(0xFEE0_1000))                 // an 8-byte write: address low and high
        p.setBar(VirtioPCIDevice.tableOffset + 16 + 8, UInt32(0x52))
        #expect(routes(1).suffix(4) == ["route 1 0xfee00000 65", "route 1 off", "route 1 off", "route 1 off"])
        p.setBar(VirtioPCIDevice.tableOffset + 16 + 12, UInt32(0))
        #expect(routes(1).last == "route 1 0xfee01000 82")
        p.setCfg(PCICapabilities.msix + 2, 0xC000, size: 2)                 // function mask: every vector off
        #expect(routes(0).last == "route 0 off" && routes(1).last == "route 1 off")
        p.setCfg(PCICapabilities.msix + 2, 0x8000, size: 2)
        #expect(routes(1).last == "route 1 0xfee01000 82" && routes(0).last == "route 0 off")   // vector 0 is still masked
    }

    @Test func aMalformedChainSetsNeedsResetAndRaisesTheConfigVector() throws {
        let f = try device(VirtioRNG())
        let p = PCIDriver(f: f)
        let d = TestDriver(memory: memory, size: 8)
        p.enableMSIX()
        p.bringUp(features: VirtioFeature.version1, queues: [(d.desc, d.avail, d.used, 8)])
        try d.setDescriptor(0, address: 0x100000, length: 16, flags: 2 | 1, next: 0)   // a loop
        try d.makeAvailable(0)
        f.service(queue: 0)
        #expect(f.status & VirtioStatus.needsReset != 0)
        #expect(f.needsResetReason?.contains("loop") == true)
        #expect(msix.fired == ["fire 0"])                                      // config vector
        #expect(p.bar(VirtioPCIDevice.isrOffset, UInt8.self) & 2 != 0)
        f.service(queue: 0)                                                    // stopped: nothing more happens
        #expect(d.usedIdx == 0)
        p.setBar(0x14, UInt8(0))                                               // reset clears it
        #expect(f.status == 0)
    }

    @Test func ringsOutsideRAMAtDriverOKAskForAReset() throws {
        let f = try device(VirtioRNG())
        let p = PCIDriver(f: f)
        p.bringUp(features: VirtioFeature.version1, queues: [(0x7FFF_0000, 0x2000, 0x3000, 8)])
        #expect(f.status & VirtioStatus.needsReset != 0)
    }

    @Test func theConsoleWritesTransmittedBytesAndDeliversInput() throws {
        let out = Mutex<[UInt8]>([])
        var pipeFDs: [Int32] = [0, 0]
        #expect(pipe(&pipeFDs) == 0)
        defer { close(pipeFDs[0]); close(pipeFDs[1]) }
        let console = VirtioConsole(input: pipeFDs[0]) { bytes in out.withLock { $0 += bytes } }
        let f = try device(console)
        let p = PCIDriver(f: f)
        let rx = TestDriver(memory: memory, size: 8)
        let txBase: UInt64 = 0x50000
        let txq = (txBase, txBase + 0x1000, txBase + 0x2000, UInt16(8))
        p.enableMSIX()
        p.bringUp(features: VirtioFeature.version1, queues: [(rx.desc, rx.avail, rx.used, 8), txq])
        // Transmit "hello" through queue 1.
        try memory.write(Array("hello".utf8), at: 0x100000)
        try memory.store(UInt64(0x100000), at: txBase); try memory.store(UInt32(5), at: txBase + 8)
        try memory.store(UInt16(0), at: txBase + 12)
        try memory.store(UInt16(0), at: txBase + 0x1000 + 4); try memory.store(UInt16(1), at: txBase + 0x1000 + 2)
        f.service(queue: 1)
        #expect(out.withLock { $0 } == Array("hello".utf8))
        #expect(try memory.load(UInt16.self, at: txBase + 0x2000 + 2) == 1)
        // Input: a receive buffer, then bytes on the pipe.
        try rx.setDescriptor(0, address: 0x200000, length: 64, flags: 2)
        try rx.makeAvailable(0)
        f.service(queue: 0)                                                    // no input yet: buffer kept
        #expect(rx.usedIdx == 0)
        _ = Array("ls\n".utf8).withUnsafeBytes { write(pipeFDs[1], $0.baseAddress, 3) }
        f.serviceInput(0)
        let element = try rx.usedElement(0)
        #expect(rx.usedIdx == 1 && element == (0, 3))
        #expect(try memory.read(at: 0x200000, count: 3) == Array("ls\n".utf8))
        #expect(console.bytesWritten == 5)
    }
}
