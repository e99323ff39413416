import Foundation
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

    /// The first 2 MiB (boot structures, the guest's real-mode and BIOS
    /// areas: a few scattered pages) are advised against huge pages, the rest
    /// of RAM for them: the kernel's own account of each mapping
    /// (/proc/self/smaps VmFlags: `nh`, `hg`) says so.
    @Test func onlyTheFirstTwoMiBAreKeptOffHugePages() throws {
        let m = try GuestMemory(layout: [(0, 0x80_0000), (0x1_0000_0000, 0x40_0000)])
        // Read to the end by hand: a /proc file says its size is 0.
        let fd = open("/proc/self/smaps", O_RDONLY)
        #expect(fd >= 0)
        defer { close(fd) }
        var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 65536)
        while case let n = read(fd, &chunk, chunk.count), n > 0 { bytes += chunk[..<n] }
        let smaps = String(decoding: bytes, as: UTF8.self)
        var flags: [UInt: String] = [:]     // start of each mapping -> its VmFlags
        var start: UInt?
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let a = UInt(line[..<dash], radix: 16) {
                start = a
            } else if line.hasPrefix("VmFlags:"), let s = start {
                flags[s] = String(line.dropFirst("VmFlags:".count))
            }
        }
        let low = m.regions[0].host, high = m.regions[1].host
        let words = { (a: UInt) in Set((flags[a] ?? "").split(separator: " ").map(String.init)) }
        #expect(words(low).contains("nh"), "guest 0: \(flags[low] ?? "no mapping")")
        #expect(words(low + (2 << 20)).contains("hg"), "guest 2 MiB: \(flags[low + (2 << 20)] ?? "no mapping")")
        #expect(words(high).contains("hg"), "guest 4 GiB: \(flags[high] ?? "no mapping")")
        #expect(!words(high).contains("nh"))
    }
}
