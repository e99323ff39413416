import Glibc
import Synchronization
import Testing
@testable import Machine
@testable import VMCore
@testable import Virtio

/// Each device's snapshot state (docs/snapshot.md): saved, restored into a
/// fresh device of the same kind, and what the guest then reads back is what
/// it read before; a state that does not fit is refused and changes nothing.
@Suite struct DeviceStateTests {
    @Test func theSerialPortComesBackWithItsRegistersAndUnreadInput() throws {
        let lines = Mutex<[Bool]>([])
        let a = Serial16550(output: { _ in }, setIRQ: { _ in })
        func out(_ s: Serial16550, _ port: UInt16, _ v: UInt8) { withUnsafeBytes(of: v) { s.write(address: UInt64(port), data: $0) } }
        func inp(_ s: Serial16550, _ port: UInt16) -> UInt8 { var v: UInt8 = 0; withUnsafeMutableBytes(of: &v) { s.read(address: UInt64(port), data: $0) }; return v }
        out(a, 0x3FB, 0x83); out(a, 0x3F8, 0x01); out(a, 0x3FB, 0x03)   // divisor 1, 8N1
        out(a, 0x3F9, 0x01)                                              // receive interrupts on
        out(a, 0x3FF, 0x5A)                                              // scratch
        a.receive(Array("hi".utf8))
        let saved = try a.saveState()
        let b = Serial16550(output: { _ in }, setIRQ: { high in lines.withLock { $0.append(high) } })
        try b.restoreState(saved)
        #expect(lines.withLock { $0 } == [true])                         // input waiting: the line is driven high again
        #expect(inp(b, 0x3FB) == 0x03 && inp(b, 0x3F9) == 0x01 && inp(b, 0x3FF) == 0x5A)
        #expect(inp(b, 0x3FD) & 1 == 1 && inp(b, 0x3F8) == UInt8(ascii: "h") && inp(b, 0x3F8) == UInt8(ascii: "i"))
        #expect(throws: DeviceStateError.self) { try b.restoreState(Array(#"{"ier": 1}"#.utf8)) }
        #expect(throws: DeviceStateError.self) { try b.restoreState(Array("not json".utf8)) }
    }

    @Test func theKeyboardControllerKeepsItsBufferedKeys() throws {
        let pulses = Mutex(0)
        let a = I8042(setIRQ: { _ in }, reset: {})
        #expect(a.sendCtrlAltDel())
        let b = I8042(setIRQ: { high in if high { pulses.withLock { $0 += 1 } } }, reset: {})
        try b.restoreState(try a.saveState())
        #expect(pulses.withLock { $0 } == 1)                             // the buffered keys interrupt again
        var v: UInt8 = 0
        withUnsafeMutableBytes(of: &v) { b.read(address: UInt64(I8042.dataPort), data: $0) }
        #expect(v == I8042.ctrlAltDel[0])
    }

    @Test func aRunningVirtioFunctionContinuesWithItsQueuesAndVectors() throws {
        let memory = try GuestMemory(size: 16 << 20)
        let msixA = RecordingMSIX(), msixB = RecordingMSIX()
        let a = try VirtioPCIDevice(device: VirtioRNG(), barAddress: 0xE000_0000, memory: memory) { _ in msixA }
        let p = PCIDriver(f: a)
        let d = TestDriver(memory: memory, size: 8)
        p.enableMSIX()
        p.bringUp(features: VirtioFeature.version1 | VirtioFeature.eventIndex, queues: [(d.desc, d.avail, d.used, 8)])
        for i in 0..<3 {
            try d.setDescriptor(UInt16(i), address: 0x100000 + UInt64(i) * 4096, length: 64, flags: 2)
            try d.makeAvailable(UInt16(i))
        }
        a.service(queue: 0)
        #expect(d.usedIdx == 3)
        a.pause()
        let saved = try a.saveState()

        let b = try VirtioPCIDevice(device: VirtioRNG(), barAddress: 0xE000_0000, memory: memory) { _ in msixB }
        try b.restoreState(saved)
        let q = PCIDriver(f: b)
        #expect(b.status == p.bar(0x14, UInt8.self) && q.bar(0x18, UInt16.self) == 8 && q.cfg32(0x10) == 0xE000_0000)
        #expect(msixB.log.withLock { $0 }.contains("route 1 0xfee00000 65"))   // every vector routed as the driver left it
        // The queue continues at its fourth chain: one more is served, not the first three again.
        try d.setDescriptor(3, address: 0x104000, length: 64, flags: 2)
        try d.makeAvailable(3)
        b.service(queue: 0)
        let fourth = try d.usedElement(3)
        #expect(d.usedIdx == 4 && fourth.0 == 3)

        // What does not fit this function is refused before anything changes.
        let c = try VirtioPCIDevice(device: VirtioConsole(input: nil, output: { _ in }), barAddress: 0xE000_8000, memory: memory) { _ in RecordingMSIX() }
        #expect(throws: DeviceStateError.self) { try c.restoreState(saved) }   // two queues, not one
        #expect(c.status == 0)
        var broken = String(decoding: saved, as: UTF8.self)
        broken = broken.replacingOccurrences(of: "[0,0,0,1]", with: "[0,0]")
        if broken != String(decoding: saved, as: UTF8.self) {
            let e = try VirtioPCIDevice(device: VirtioRNG(), barAddress: 0xE000_0000, memory: memory) { _ in RecordingMSIX() }
            #expect(throws: DeviceStateError.self) { try e.restoreState(Array(broken.utf8)) }
        }
    }

    @Test func aVirtioNetKeepsItsQueuePairsAndOffloads() throws {
        let memory = try GuestMemory(size: 16 << 20)
        let backend = SocketNetBackend(pairs: 2)
        let a = VirtioNet(backend: backend, mac: [2, 0, 0, 0, 0, 1])
        a.activate(features: VirtioNet.Feature.multiQueue | VirtioNet.Feature.guestCsum | VirtioNet.Feature.ctrlGuestOffloads | VirtioNet.Feature.controlQueue,
                   queues: [], transport: NoTransport())
        #expect(a.execute([4, 0, 2, 0]) == 0)                            // two pairs
        #expect(a.execute([5, 0, 0, 0, 0, 0, 0, 0, 0, 0]) == 0)          // receive offloads off
        let saved = try a.saveState()
        let backendB = SocketNetBackend(pairs: 2)
        let b = VirtioNet(backend: backendB, mac: [2, 0, 0, 0, 0, 1])
        b.activate(features: a.features, queues: [], transport: NoTransport())
        try b.restoreState(saved)
        #expect(b.activePairs.load(ordering: .relaxed) == 2 && backendB.activeQueues == 2 && backendB.offloads == 0)
        _ = memory
    }
}
