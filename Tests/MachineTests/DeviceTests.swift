import Glibc
import Synchronization
import KVM
import Testing
@testable import Machine
@testable import Stats
@testable import VMCore
@testable import Virtio

/// Records what a device did with its outputs.
final class Recorder: Sendable {
    let bytes = Mutex<[UInt8]>([])
    let irq = Mutex<[Bool]>([])
}

extension BusDevice {
    func readByte(_ address: UInt64) -> UInt8 {
        var v: UInt8 = 0
        withUnsafeMutableBytes(of: &v) { read(address: address, data: $0) }
        return v
    }
    func writeByte(_ address: UInt64, _ value: UInt8) {
        withUnsafeBytes(of: value) { write(address: address, data: $0) }
    }
}

@Suite struct Serial16550Tests {
    let base = UInt64(Serial16550.com1Base)

    func uart() -> (Serial16550, Recorder) {
        let r = Recorder()
        let u = Serial16550(output: { b in r.bytes.withLock { $0.append(b) } }, setIRQ: { h in r.irq.withLock { $0.append(h) } })
        return (u, r)
    }

    @Test func transmitsWhatIsWrittenToTHR() {
        let (u, r) = uart()
        for b in Array("hi\n".utf8) { u.writeByte(base, b) }
        #expect(r.bytes.withLock { $0 } == Array("hi\n".utf8))
        #expect(u.readByte(base + 5) & 0x60 == 0x60)       // THRE | TEMT: always ready
    }

    @Test func thrEmptyInterruptFollowsTheDriversHandshake() {
        let (u, r) = uart()
        #expect(u.readByte(base + 2) == 0x01)              // no interrupt
        u.writeByte(base + 1, 0x02)                         // enable THRI
        #expect(r.irq.withLock { $0 } == [true])
        #expect(u.readByte(base + 2) == 0x02)              // THR empty; reading IIR clears it
        #expect(u.readByte(base + 2) == 0x01)
        #expect(r.irq.withLock { $0 } == [true, false])
        u.writeByte(base, 0x41)                             // a byte sent: THR empty again
        #expect(r.irq.withLock { $0 } == [true, false, true])
        u.writeByte(base + 1, 0x00)                         // disable: line drops
        #expect(r.irq.withLock { $0.last } == false)
    }

    @Test func receivesInputWithAnInterruptAndFIFOBits() {
        let (u, r) = uart()
        u.writeByte(base + 2, 0x07)                         // enable and clear FIFOs
        u.writeByte(base + 1, 0x01)                         // enable RDI
        #expect(u.receive(Array("ab".utf8)) == 2)
        #expect(r.irq.withLock { $0 } == [true])
        #expect(u.readByte(base + 2) == 0xC4)               // FIFO enabled, data available
        #expect(u.readByte(base + 5) & 0x01 == 0x01)
        #expect(u.readByte(base) == UInt8(ascii: "a"))
        #expect(u.readByte(base) == UInt8(ascii: "b"))
        #expect(u.readByte(base + 5) & 0x01 == 0)
        #expect(r.irq.withLock { $0 } == [true, false])
    }

    @Test func loopbackReflectsModemControlAsLinuxProbesIt() {
        let (u, r) = uart()
        u.writeByte(base + 4, 0x1A)                         // LOOP | OUT2 | RTS
        #expect(u.readByte(base + 6) & 0xF0 == 0x90)        // DCD | CTS, what 8250 autoconfig expects
        u.writeByte(base, 0x55)
        #expect(r.bytes.withLock { $0 }.isEmpty)            // looped back, not transmitted
        #expect(u.readByte(base) == 0x55)
        u.writeByte(base + 4, 0x00)
        #expect(u.readByte(base + 6) == 0xB0)
    }

    @Test func divisorLatchAndScratchKeepTheirValues() {
        let (u, _) = uart()
        u.writeByte(base + 3, 0x80)
        u.writeByte(base, 0x01); u.writeByte(base + 1, 0x02)
        #expect(u.readByte(base) == 0x01 && u.readByte(base + 1) == 0x02)
        u.writeByte(base + 3, 0x03)
        u.writeByte(base + 7, 0x5A)
        #expect(u.readByte(base + 7) == 0x5A && u.readByte(base + 3) == 0x03)
    }
}

@Suite struct BoardDeviceTests {
    @Test func cmosClockReadsTheTimeInBCD() {
        // 2026-11-21 14:05:09 UTC, a Saturday.
        let t: time_t = 1795269909
        #expect(CMOSClock.register(0x00, at: t) == 0x09)
        #expect(CMOSClock.register(0x02, at: t) == 0x05)
        #expect(CMOSClock.register(0x04, at: t) == 0x14)
        #expect(CMOSClock.register(0x07, at: t) == 0x21)
        #expect(CMOSClock.register(0x08, at: t) == 0x11)
        #expect(CMOSClock.register(0x09, at: t) == 0x26)
        #expect(CMOSClock.register(0x32, at: t) == 0x20)
        #expect(CMOSClock.register(0x0A, at: t) & 0x80 == 0)  // never "update in progress"
        let clock = CMOSClock(now: { t })
        clock.writeByte(0x70, 0x84)                            // NMI-disable bit plus index 4
        #expect(clock.readByte(0x71) == 0x14)
    }

    @Test func powerControlReportsSoftOffAndReset() {
        let requests = Mutex<[PowerRequest]>([])
        let p = PowerControl { r in requests.withLock { $0.append(r) } }
        p.writeByte(UInt64(ACPITables.sleepControlPort), 5 << 2)          // SLP_TYP without SLP_EN
        p.writeByte(UInt64(ACPITables.sleepControlPort), 5 << 2 | 0x20)   // S5 + SLP_EN
        p.writeByte(UInt64(ACPITables.resetPort), 0x02)                   // not the reset value
        p.writeByte(UInt64(ACPITables.resetPort), ACPITables.resetValue)
        p.writeByte(0x64, 0xFE)
        #expect(requests.withLock { $0 } == [.powerOff, .reset, .reset])
    }

    @Test func busDispatchesByRangeAndReadsUnclaimedAsOnes() {
        let clock = CMOSClock(now: { 0 })
        var bus = Bus()
        bus.register(clock, 0x70...0x71)
        #expect(bus.device(at: 0x70) === clock && bus.device(at: 0x71) === clock)
        #expect(bus.device(at: 0x72) == nil && bus.device(at: 0x6F) == nil)
        var v: UInt32 = 0
        let claimed = withUnsafeMutableBytes(of: &v) { bus.access(0x80, isWrite: false, data: $0) }
        #expect(!claimed && v == 0xFFFF_FFFF)
    }

    @Test func amlPackageLengthsUseAsManyBytesAsNeeded() {
        #expect(AML.pkgLength(5) == [6])
        #expect(AML.pkgLength(62) == [63])
        // 63 bytes of content + 2 length bytes = 65 = 0x41: 0x41 & 0xF | 1 << 6, 0x41 >> 4.
        #expect(AML.pkgLength(63) == [0x41, 0x04])
        // 4000 + 2 = 0xFA2 fits two bytes (up to 0xFFF); 5000 + 3 = 0x138B needs three.
        #expect(AML.pkgLength(4000) == [0x42, 0xFA])
        #expect(AML.pkgLength(5000) == [0x8B, 0x38, 0x01])
        #expect(AML.eisaID("PNP0501") == [0x0C, 0x41, 0xD0, 0x05, 0x01])
    }

    @Test func cpuidGivesEachVCPUItsOwnAPICIdAndTheTopology() {
        let supported = [CPUIDEntry(function: 1, ebx: 0x0102_0800, ecx: 0x76F8_3203, edx: 0x0F8B_FBFD),
                         CPUIDEntry(function: 0xB, index: 0), CPUIDEntry(function: 0xB, index: 1),
                         CPUIDEntry(function: 0x4000_0000, eax: 0x4000_0001)]
        let policy = CPUIDPolicy(supported: supported, cpus: 4)
        let cpu3 = policy.entries(forCPU: 3)
        let leaf1 = cpu3.first { $0.function == 1 }!
        #expect(leaf1.ebx >> 24 == 3)
        #expect((leaf1.ebx >> 16) & 0xFF == 4)
        #expect(leaf1.ecx & (1 << 31) != 0)                   // hypervisor present
        #expect(leaf1.edx & (1 << 28) != 0)                   // HTT with more than one CPU
        let core = cpu3.first { $0.function == 0xB && $0.index == 1 }!
        #expect(core.edx == 3 && core.ebx == 4 && core.eax == 2)
        #expect(cpu3.contains { $0.function == 0x4000_0000 })
    }
}

@Suite struct CPUFeatureTests {
    let supported = [CPUIDEntry(function: 1, ecx: 1 << 13 | 1 << 21, edx: 1 << 26),
                     CPUIDEntry(function: 7, ebx: 1 << 5)]

    @Test func parsesAddsMasksAndBareNames() throws {
        #expect(try CPUFeatures.parse("-cx16, +x2apic,avx2") == [
            .init(name: "cx16", enable: false), .init(name: "x2apic", enable: true), .init(name: "avx2", enable: true)])
        #expect(throws: CPUFeatureError.unknown("nosuch")) { try CPUFeatures.parse("-nosuch") }
    }

    @Test func masksAndAddsBitsWhereCPUIDReportsThem() throws {
        let guest = [CPUIDEntry(function: 1, ecx: 1 << 13, edx: 1 << 26), CPUIDEntry(function: 7)]
        let out = try CPUFeatures.apply(CPUFeatures.parse("-cx16,+x2apic,+avx2,-sse2"), to: guest, supported: supported)
        #expect(out[0].ecx == 1 << 21)
        #expect(out[0].edx == 0)
        #expect(out[1].ebx == 1 << 5)
    }

    @Test func refusesAFeatureTheHostCannotGive() throws {
        #expect(throws: CPUFeatureError.unsupported("avx512f")) {
            try CPUFeatures.apply(CPUFeatures.parse("+avx512f"), to: supported, supported: supported)
        }
    }
}

@Suite struct PCIHostBridgeTests {
    func read32(_ b: PCIHostBridge, bus: UInt32, device: UInt32, offset: UInt32) -> UInt32 {
        var address = 1 << 31 | bus << 16 | device << 11 | offset
        withUnsafeBytes(of: &address) { b.write(address: 0xCF8, data: $0) }
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { b.read(address: 0xCFC, data: $0) }
        return v
    }

    @Test func theHostBridgeIsAtZeroZeroZero() {
        let b = PCIHostBridge()
        #expect(read32(b, bus: 0, device: 0, offset: 0) == 0x0D57_8086)
        #expect(read32(b, bus: 0, device: 0, offset: 8) >> 8 == 0x06_0000)   // class code
        // The address register reads back (Linux's type-1 probe checks it).
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { b.read(address: 0xCF8, data: $0) }
        #expect(v == 1 << 31 | 8)
    }

    @Test func everyOtherSlotIsEmpty() {
        let b = PCIHostBridge()
        #expect(read32(b, bus: 0, device: 1, offset: 0) == 0xFFFF_FFFF)
        #expect(read32(b, bus: 1, device: 0, offset: 0) == 0xFFFF_FFFF)
        // A byte read at 0xCFE reads the device id's low byte.
        var address: UInt32 = 1 << 31
        withUnsafeBytes(of: &address) { b.write(address: 0xCF8, data: $0) }
        #expect(b.readByte(0xCFE) == 0x57)
    }
}

@Suite struct HostIOTests {
    /// A full non-blocking pipe: writeAll waits for the reader instead of
    /// spinning or dropping, and every byte arrives in order.
    @Test func writeAllWaitsOnAFullNonBlockingPipe() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[0]) }
        #expect(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) == 0)
        let size = 1 << 20                      // sixteen times a default pipe's capacity
        let sent = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        let received = Mutex<[UInt8]>([])
        let reader = fds[0]
        let thread = try startHostThread("pipe reader") {
            usleep(100_000)                     // the writer finds the pipe full first
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = chunk.withUnsafeMutableBytes { read(reader, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                received.withLock { $0 += chunk[0..<n] }
            }
        }
        let ok = sent.withUnsafeBytes { HostIO.writeAll(fds[1], $0) }
        close(fds[1])
        pthread_join(thread, nil)
        #expect(ok)
        // Compared as one Bool: on a mismatch swift-testing would otherwise
        // diff the two 1 MiB arrays (quadratic) to describe it.
        let got = received.withLock { $0 }
        #expect(got.count == sent.count)
        let identical = got == sent
        #expect(identical)
    }

    /// A pipe whose reader is gone: writeAll reports the failure (EPIPE)
    /// and returns instead of retrying forever.
    @Test func writeAllFailsOnAClosedPipe() throws {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        close(fds[0])
        defer { close(fds[1]) }
        let previous = signal(SIGPIPE, SIG_IGN)
        defer { signal(SIGPIPE, previous) }
        let ok = [UInt8](repeating: 1, count: 100).withUnsafeBytes { HostIO.writeAll(fds[1], $0) }
        #expect(!ok)
    }
}

@Suite struct VCPUStateTests {
    /// IRR and ISR are 256-bit maps spread over eight 32-bit registers 16
    /// bytes apart; vectors in the first, a middle and the last register.
    @Test func localAPICBitmapsGiveTheirVectors() {
        var page = [UInt8](repeating: 0, count: 1024)
        page[0x200] = 0b0000_0001              // vector 0 (register 0, bit 0)
        page[0x200 + 0x10 + 3] = 0x80          // vector 63 (register 1, bit 31)
        page[0x200 + 7 * 0x10 + 1] = 0x10      // vector 236 (register 7, bit 12)
        page[0x100 + 1 * 0x10] = 0x10          // vector 36 in service
        #expect(VCPUState.vectors(in: page, at: 0x200) == [0, 63, 236])
        #expect(VCPUState.vectors(in: page, at: 0x100) == [36])
        #expect(VCPUState.vectors(in: [UInt8](repeating: 0xFF, count: 0x204), at: 0x200) == Array(0..<32))
    }

    @Test func theSummaryNamesStateInterruptsAndVectors() {
        var s = VCPUState(rip: 0x1000, interruptsEnabled: true, mpState: .halted)     // KVM_MP_STATE_HALTED
        #expect(s.summary == "halted, interrupts on")
        s.requested = [36]
        s.inService = [34, 36]
        s.injecting = 36
        s.nmiPending = true
        #expect(s.summary == "halted, interrupts on, requested 36, in service 34 36, injecting 36, NMI pending")
        #expect(VCPUState(rip: 0, interruptsEnabled: false, mpState: .runnable).summary == "running, interrupts off")
        var corrupt = VCPUState(rip: 0xFFFF_FFFF_C042_220C, interruptsEnabled: true, mpState: .runnable)
        corrupt.ripMapped = false
        #expect(corrupt.summary == "running, interrupts on, RIP not mapped in the guest's page tables: not the guest's state")
        #expect(VCPUState(rip: 0, interruptsEnabled: false, mpState: nil).summary == "interrupts off")
    }

    /// A halted vCPU with interrupts on and a requested vector above its
    /// processor priority would have woken on a working KVM; the summary
    /// says so. A vector held back by TPR or by a higher one in service,
    /// interrupts off, or a running vCPU are ordinary states.
    @Test func aHaltedVCPUWithADeliverableInterruptIsNamed() {
        var s = VCPUState(rip: 0xFFFF_FFFF_81A1_7A0B, interruptsEnabled: true, mpState: .halted)
        #expect(!s.sleepsThroughAnInterrupt)
        s.requested = [36, 37]
        #expect(s.sleepsThroughAnInterrupt)
        #expect(s.summary == "halted, interrupts on, requested 36 37, \(VCPUState.notWoken)")
        s.inService = [236]                                 // a higher class in service holds 36 and 37 back
        #expect(!s.sleepsThroughAnInterrupt)
        s.inService = [33]                                  // the same class (2) in service: held back too
        #expect(!s.sleepsThroughAnInterrupt)
        s.inService = []
        s.taskPriority = 0x20                               // TPR class 2 masks class 2
        #expect(!s.sleepsThroughAnInterrupt)
        s.requested = [48]                                  // class 3 passes it
        #expect(s.sleepsThroughAnInterrupt)
        s.interruptsEnabled = false
        #expect(!s.sleepsThroughAnInterrupt)
        s.interruptsEnabled = true
        s.mpState = .runnable
        #expect(!s.sleepsThroughAnInterrupt && !s.summary.contains(VCPUState.notWoken))
    }
}
