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

    /// A memory file of `m` written by `save`, read back whole.
    func saved(_ m: GuestMemory) throws -> [UInt8] {
        let path = NSTemporaryDirectory() + "svmm-mem-\(UUID().uuidString)"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        try m.save(to: fd)
        return try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Whether any page of `m`'s first region in [from, to) is in this
    /// process's page table (mincore: a page read once maps the zero page,
    /// which counts).
    func anyResident(_ m: GuestMemory, _ from: Int, _ to: Int) -> Bool {
        var vec = [UInt8](repeating: 0, count: (to - from) / 4096)
        let rc = mincore(UnsafeMutableRawPointer(bitPattern: m.regions[0].host + UInt(from)), to - from, &vec)
        #expect(rc == 0)
        return vec.contains { $0 & 1 != 0 }
    }

    /// A Full snapshot of anonymous RAM reads only the pages that were
    /// touched: 2 GiB of a guest that used 90 MB was read whole before. What
    /// was written is in the file; what was never touched is zero there and
    /// still out of the page table afterwards.
    @Test func savingReadsOnlyThePagesTouched() throws {
        let m = try GuestMemory(size: 64 << 20)
        let marks: [(UInt64, UInt8)] = [(0x1000, 1), (0x50_0123, 2), (0x280_0000 - 8, 3)]
        for (a, v) in marks { try m.write([UInt8](repeating: v, count: 8), at: a) }
        try m.fill(0, at: 0x10_0000, count: 4096)
        #expect(!anyResident(m, 48 << 20, 64 << 20))
        let file = try saved(m)
        #expect(file.count == 64 << 20)
        var expected = [UInt8](repeating: 0, count: 64 << 20)
        for (a, v) in marks { expected.replaceSubrange(Int(a)..<Int(a) + 8, with: repeatElement(v, count: 8)) }
        #expect(file == expected)
        #expect(!anyResident(m, 48 << 20, 64 << 20), "save read pages nobody touched")
        #expect(!anyResident(m, 0x20_0000, 0x40_0000))
    }

    /// RAM mapped from a memory file (a restored guest) holds the file's
    /// bytes in pages this process never touched: a snapshot of it reads
    /// every page.
    @Test func savingRAMMappedFromAFileReadsEveryPage() throws {
        let a = try GuestMemory(size: 8 << 20)
        try a.write([7, 7, 7, 7], at: 0x40_1000)
        try a.write([9], at: 0x7F_FFFF)
        let path = NSTemporaryDirectory() + "svmm-mem-\(UUID().uuidString)"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        try a.save(to: fd)
        let b = try GuestMemory(size: 8 << 20)
        try b.mapPrivately(fd)
        let file = try saved(b)
        #expect(Array(file[0x40_1000..<0x40_1004]) == [7, 7, 7, 7])
        #expect(file[0x7F_FFFF] == 9)
        #expect(file.count == 8 << 20)
    }
}
