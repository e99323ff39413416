import Glibc
import Testing
@testable import Machine
@testable import Stats
@testable import VMCore
@testable import Virtio

/// A driver's side of a split virtqueue in guest memory, for tests: writes
/// descriptors and available entries the way Linux's virtio_ring does.
final class TestDriver {
    let memory: GuestMemory
    let size: UInt16
    let desc: UInt64, avail: UInt64, used: UInt64
    var availIdx: UInt16 = 0

    /// The rings at 0x10000, 0x20000 and 0x30000 past `base`.
    init(memory: GuestMemory, size: UInt16 = 8, base: UInt64 = 0) {
        self.memory = memory
        self.size = size
        desc = base + 0x10000
        avail = base + 0x20000
        used = base + 0x30000
    }

    func queue(eventIndex: Bool = false, indirect: Bool = true) throws -> Virtqueue {
        try Virtqueue(memory: memory, size: size, descriptors: desc, available: avail, used: used,
                      eventIndex: eventIndex, indirect: indirect)
    }

    func setDescriptor(_ i: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0, table: UInt64? = nil) throws {
        let d = (table ?? desc) + 16 * UInt64(i)
        try memory.store(address, at: d)
        try memory.store(length, at: d + 8)
        try memory.store(flags, at: d + 12)
        try memory.store(next, at: d + 14)
    }

    func makeAvailable(_ head: UInt16) throws {
        try memory.store(head, at: avail + 4 + 2 * UInt64(availIdx % size))
        availIdx &+= 1
        try memory.store(availIdx, at: avail + 2)
    }

    var usedIdx: UInt16 { (try? memory.load(UInt16.self, at: used + 2)) ?? 0 }
    func usedElement(_ i: UInt16) throws -> (UInt32, UInt32) {
        let e = used + 4 + 8 * UInt64(i % size)
        return (try memory.load(UInt32.self, at: e), try memory.load(UInt32.self, at: e + 4))
    }
}

@Suite struct VirtqueueTests {
    let memory: GuestMemory
    init() throws { memory = try GuestMemory(size: 16 << 20) }

    @Test func aChainOfReadableThenWritableBuffersIsTakenAndReturned() throws {
        let d = TestDriver(memory: memory)
        try d.setDescriptor(0, address: 0x100000, length: 100, flags: 1, next: 3)
        try d.setDescriptor(3, address: 0x200000, length: 50, flags: 1 | 2, next: 5)
        try d.setDescriptor(5, address: 0x300000, length: 10, flags: 2)
        try d.makeAvailable(0)
        let q = try d.queue()
        let chain = try #require(try q.pop())
        #expect(chain.head == 0)
        #expect(chain.readable == [VirtqueueBuffer(address: 0x100000, length: 100)])
        #expect(chain.writable == [VirtqueueBuffer(address: 0x200000, length: 50), VirtqueueBuffer(address: 0x300000, length: 10)])
        #expect(try q.pop() == nil)
        q.push(head: chain.head, written: 60)
        #expect(d.usedIdx == 1)
        #expect(try d.usedElement(0) == (0, 60))
        #expect(q.needsInterrupt())          // no NO_INTERRUPT flag, no event index
    }

    @Test func indirectTablesAreFollowedOnlyWhenNegotiated() throws {
        let d = TestDriver(memory: memory)
        let table: UInt64 = 0x40000
        try d.setDescriptor(0, address: 0x100000, length: 8, flags: 1, next: 1, table: table)
        try d.setDescriptor(1, address: 0x100100, length: 16, flags: 2, table: table)
        try d.setDescriptor(2, address: table, length: 32, flags: 4)
        try d.makeAvailable(2)
        let chain = try #require(try d.queue().pop())
        #expect(chain.head == 2 && chain.readable.count == 1 && chain.writable == [VirtqueueBuffer(address: 0x100100, length: 16)])
        #expect(throws: VirtqueueError.badIndirect) { try d.queue(indirect: false).pop() }
    }

    @Test func eventIndexInterruptsOnlyWhenTheDriverAskedAndPublishesAvailEvent() throws {
        let d = TestDriver(memory: memory)
        for i in UInt16(0)..<4 {
            try d.setDescriptor(i, address: 0x100000 + UInt64(i) * 0x1000, length: 16, flags: 2)
            try d.makeAvailable(i)
        }
        let q = try d.queue(eventIndex: true)
        let usedEvent = d.avail + 4 + 2 * UInt64(d.size)
        try memory.store(UInt16(2), at: usedEvent)       // interrupt when used idx passes 2 (i.e. reaches 3)
        var wanted: [Bool] = []
        while let c = try q.pop() {
            q.push(head: c.head, written: 16)
            wanted.append(q.needsInterrupt())
        }
        #expect(wanted == [false, false, true, false])
        #expect(q.enableNotification() == false)
        #expect(try memory.load(UInt16.self, at: d.used + 4 + 8 * UInt64(d.size)) == 4)   // avail_event = next index
        try d.setDescriptor(0, address: 0x100000, length: 16, flags: 2)
        try d.makeAvailable(0)
        #expect(q.enableNotification() == true)          // a buffer arrived: do not sleep
    }

    /// A device that leaves chains it cannot use yet must hear of the next
    /// one: avail_event is the driver's index, not the device's next.
    @Test func chainsLeftAvailableStillGetTheNextNotification() throws {
        let d = TestDriver(memory: memory)
        for i in UInt16(0)..<3 {
            try d.setDescriptor(i, address: 0x100000 + UInt64(i) * 0x1000, length: 16, flags: 2)
            try d.makeAvailable(i)
        }
        let q = try d.queue(eventIndex: true)
        _ = try q.pop()
        q.unpop(1)                                         // too few for what the device holds: none taken
        #expect(q.enableNotification() == true)           // there are chains, not taken
        let availEvent = try memory.load(UInt16.self, at: d.used + 4 + 8 * UInt64(d.size))
        #expect(availEvent == 3)
        // The driver adds one more (old index 3, new 4): vring_need_event says notify.
        let (old, new): (UInt16, UInt16) = (3, 4)
        #expect(new &- availEvent &- 1 < new &- old)
    }

    @Test func withoutEventIndexTheNoInterruptFlagIsHonoured() throws {
        let d = TestDriver(memory: memory)
        try d.setDescriptor(0, address: 0x100000, length: 16, flags: 2)
        try d.makeAvailable(0)
        try memory.store(UInt16(1), at: d.avail)          // VRING_AVAIL_F_NO_INTERRUPT
        let q = try d.queue()
        let c = try #require(try q.pop())
        q.push(head: c.head, written: 0)
        #expect(!q.needsInterrupt())
        q.disableNotification()
        #expect(try memory.load(UInt16.self, at: d.used) == 1)   // VRING_USED_F_NO_NOTIFY
    }

    // Every malformed case is refused with its reason, never a crash.

    @Test func aLoopIsRefused() throws {
        let d = TestDriver(memory: memory)
        try d.setDescriptor(0, address: 0x100000, length: 16, flags: 1, next: 1)
        try d.setDescriptor(1, address: 0x100000, length: 16, flags: 1, next: 0)
        try d.makeAvailable(0)
        #expect(throws: VirtqueueError.chainTooLong) { try d.queue().pop() }
    }

    @Test func anIndirectLoopIsRefused() throws {
        let d = TestDriver(memory: memory)
        let table: UInt64 = 0x40000
        try d.setDescriptor(0, address: 0x100000, length: 16, flags: 1, next: 1, table: table)
        try d.setDescriptor(1, address: 0x100000, length: 16, flags: 1, next: 0, table: table)
        try d.setDescriptor(0, address: table, length: 32, flags: 4)
        try d.makeAvailable(0)
        #expect(throws: VirtqueueError.chainTooLong) { try d.queue().pop() }
    }

    @Test func nestedOrChainedIndirectDescriptorsAreRefused() throws {
        let d = TestDriver(memory: memory)
        let table: UInt64 = 0x40000
        try d.setDescriptor(0, address: table, length: 16, flags: 4, table: table)   // indirect inside indirect
        try d.setDescriptor(0, address: table, length: 16, flags: 4)
        try d.makeAvailable(0)
        #expect(throws: VirtqueueError.badIndirect) { try d.queue().pop() }
        let d2 = TestDriver(memory: memory)
        try d2.setDescriptor(0, address: table, length: 16, flags: 4 | 1, next: 1)   // INDIRECT with NEXT
        try d2.makeAvailable(0)
        #expect(throws: VirtqueueError.badIndirect) { try d2.queue().pop() }
        let d3 = TestDriver(memory: memory)
        try d3.setDescriptor(0, address: table, length: 20, flags: 4)                 // not a multiple of 16
        try d3.makeAvailable(0)
        #expect(throws: VirtqueueError.badIndirect) { try d3.queue().pop() }
    }

    @Test func zeroLengthAndOutOfRAMBuffersAreRefused() throws {
        let d = TestDriver(memory: memory)
        try d.setDescriptor(0, address: 0x100000, length: 0, flags: 0)
        try d.makeAvailable(0)
        #expect(throws: VirtqueueError.zeroLength) { try d.queue().pop() }

        let d2 = TestDriver(memory: memory)
        try d2.setDescriptor(0, address: (16 << 20) - 8, length: 16, flags: 2)        // runs off the end of RAM
        try d2.makeAvailable(0)
        #expect(throws: VirtqueueError.outsideRAM(address: (16 << 20) - 8, length: 16)) { try d2.queue().pop() }

        let d3 = TestDriver(memory: memory)
        try d3.setDescriptor(0, address: UInt64.max - 4, length: 16, flags: 2)        // would overflow
        try d3.makeAvailable(0)
        #expect(throws: VirtqueueError.outsideRAM(address: UInt64.max - 4, length: 16)) { try d3.queue().pop() }

        let d4 = TestDriver(memory: memory)
        try d4.setDescriptor(0, address: 0x4000_0000, length: 0x100, flags: 4)        // indirect table outside RAM
        try d4.makeAvailable(0)
        #expect(throws: VirtqueueError.outsideRAM(address: 0x4000_0000, length: 0x100)) { try d4.queue().pop() }
    }

    @Test func badIndicesAndOrderAreRefused() throws {
        let d = TestDriver(memory: memory)
        try d.makeAvailable(9)                                                       // head beyond the queue
        #expect(throws: VirtqueueError.indexOutOfRange(9)) { try d.queue().pop() }

        let d2 = TestDriver(memory: memory)
        try d2.setDescriptor(0, address: 0x100000, length: 16, flags: 2 | 1, next: 1)
        try d2.setDescriptor(1, address: 0x100000, length: 16, flags: 0)              // readable after writable
        try d2.makeAvailable(0)
        #expect(throws: VirtqueueError.readableAfterWritable) { try d2.queue().pop() }

        let d3 = TestDriver(memory: memory)
        try memory.store(UInt16(100), at: d3.avail + 2)                               // idx jumps by 100 > 8
        #expect(throws: VirtqueueError.availableIndexJump(100)) { try d3.queue().pop() }

        #expect(throws: VirtqueueError.ringOutsideRAM) {
            try Virtqueue(memory: memory, size: 256, descriptors: (16 << 20) - 16, available: 0, used: 0x1000,
                          eventIndex: false, indirect: false)
        }
        #expect(throws: VirtqueueError.ringOutsideRAM) {
            try Virtqueue(memory: memory, size: 3, descriptors: 0, available: 0x1000, used: 0x2000, eventIndex: false, indirect: false)
        }
    }
}

/// Every input in Tests/Fuzz/corpus/TARGET (seeds, and each crash the fuzzer
/// has found, kept once fixed) goes through its fuzz target again.
@Suite struct FuzzCorpusTests {
    /// Runs every input of Tests/Fuzz/corpus/NAME through `run`; how many there were.
    static func replay(_ name: String, _ run: (UnsafeRawBufferPointer) -> Void) throws -> Int {
        let corpus = String(#filePath.dropLast("MachineTests/VirtqueueTests.swift".count)) + "Fuzz/corpus/" + name
        guard let dir = opendir(corpus) else { Issue.record("no corpus at \(corpus)"); return 0 }
        defer { closedir(dir) }
        var replayed = 0
        while let entry = readdir(dir) {
            let file = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if file.hasPrefix(".") { continue }
            let image = try ImageSource(path: corpus + "/" + file)
            image.read(0..<image.count).withUnsafeBytes { run($0) }
            replayed += 1
        }
        return replayed
    }

    @Test(arguments: FuzzTarget.allCases)
    func theFuzzCorpusReplaysWithoutACrash(target: FuzzTarget) throws {
        let replayed = try Self.replay(target.rawValue) { target.run($0) }
        #expect(replayed >= 2, "\(target.rawValue): \(replayed) inputs")
    }

    /// The board's `test-devices` target (svmm-fuzz's BoardTargets; the devices are Machine's).
    @Test func theTestDevicesCorpusReplaysWithoutACrash() throws {
        let replayed = try Self.replay("test-devices") { TestDevicesFuzz.shared.run($0) }
        #expect(replayed >= 7, "test-devices: \(replayed) inputs")
    }
}
