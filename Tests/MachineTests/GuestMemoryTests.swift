import Testing
@testable import Machine
@testable import Stats
@testable import VMCore
@testable import Virtio

@Suite struct GuestMemoryTests {
    @Test func readsBackWhatWasWritten() throws {
        let m = try GuestMemory(size: 1 << 20)
        try m.write([1, 2, 3, 4], at: 0x1000)
        #expect(try m.read(at: 0x1000, count: 4) == [1, 2, 3, 4])
        try m.store(UInt32(0xDEADBEEF), at: 0x2001)
        #expect(try m.load(UInt32.self, at: 0x2001) == 0xDEADBEEF)
        #expect(try m.read(at: 0x2001, count: 4) == [0xEF, 0xBE, 0xAD, 0xDE])
    }

    @Test func refusesAccessesOutsideRAM() throws {
        let m = try GuestMemory(size: 1 << 20)
        #expect(throws: GuestMemoryError.self) { try m.read(at: 1 << 20, count: 1) }
        #expect(throws: GuestMemoryError.self) { try m.read(at: (1 << 20) - 2, count: 4) }
        #expect(throws: GuestMemoryError.self) { try m.store(UInt64(1), at: UInt64.max - 3) }
        #expect(throws: GuestMemoryError.self) { try m.read(at: 0, count: Int.max) }
        // The last byte is fine.
        #expect(try m.read(at: (1 << 20) - 1, count: 1) == [0])
    }

    @Test func accessMayNotSpanTwoRegions() throws {
        let m = try GuestMemory(layout: [(0, 0x10000), (0x10000, 0x10000)])
        #expect(try m.read(at: 0xFFFF, count: 1) == [0])
        #expect(throws: GuestMemoryError.self) { try m.read(at: 0xFFFF, count: 2) }
        #expect(!m.contains(0x20000, count: 1))
        #expect(m.totalSize == 0x20000)
    }

    /// KVM backs guest memory with 2 MiB pages only where host and guest
    /// addresses agree modulo 2 MiB: every region's host mapping starts on a
    /// 2 MiB boundary and is usable to its last byte.
    @Test func regionsAreMappedOnHugePageBoundaries() throws {
        let m = try GuestMemory(layout: [(0, 0x300_0000), (0x1_0000_0000, 0x20_1000)])
        for r in m.regions {
            #expect(Int(bitPattern: r.host) % (2 << 20) == 0, "region at 0x\(String(r.guestAddress, radix: 16))")
            try m.store(UInt8(7), at: r.end - 1)
            #expect(try m.load(UInt8.self, at: r.end - 1) == 7)
        }
    }
}
