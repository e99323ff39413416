import Foundation
import Glibc
import Testing
@testable import Machine
@testable import VMCore
@testable import Virtio

/// virtio-blk requests built the way Linux's virtio_blk lays them out (a
/// 16-byte header, data buffers, a 1-byte status), served against an image
/// file, and the file and guest memory read back.
@Suite struct VirtioBlockTests {
    let memory: GuestMemory
    init() throws { memory = try GuestMemory(size: 16 << 20) }

    final class Context: VirtioQueueContext {
        func interruptIfNeeded(_ queue: Virtqueue, index: Int) {}
    }

    static let header: UInt64 = 0x100000, data: UInt64 = 0x200000, status: UInt64 = 0x300000

    /// Puts one request on a fresh queue and serves it: the status byte and
    /// the used length. `data` buffers are (address, length, device-writable).
    func request(_ device: VirtioBlock, type: UInt32, sector: UInt64, data: [(UInt64, UInt32, Bool)] = [],
                 headerLength: UInt32 = 16, withStatus: Bool = true) throws -> (status: UInt8?, used: UInt32) {
        let d = TestDriver(memory: memory, size: 8)
        try memory.store(type, at: Self.header)
        try memory.store(UInt32(0), at: Self.header + 4)
        try memory.store(sector, at: Self.header + 8)
        try memory.store(UInt8(0xEE), at: Self.status)
        var descriptors: [(UInt64, UInt32, UInt16)] = [(Self.header, headerLength, 0)]
        descriptors += data.map { ($0.0, $0.1, $0.2 ? 2 : 0) }
        if withStatus { descriptors.append((Self.status, 1, 2)) }
        for (i, desc) in descriptors.enumerated() {
            let more = i < descriptors.count - 1
            try d.setDescriptor(UInt16(i), address: desc.0, length: desc.1, flags: desc.2 | (more ? 1 : 0), next: UInt16(i + 1))
        }
        try d.makeAvailable(0)
        let q = try d.queue()
        try device.process(queue: 0, q, context: Context())
        device.quiesce(queues: [q], context: Context())      // the reads and writes in flight complete
        #expect(d.usedIdx == 1, "the request was not answered")
        let (_, used) = try d.usedElement(0)
        return (withStatus ? try memory.load(UInt8.self, at: Self.status) : nil, used)
    }

    func withImage<R>(size: Int = 1 << 20, _ body: (String) throws -> R) throws -> R {
        try withTemporaryDirectory("svmm-blk") { dir in
            let path = dir.appendingPathComponent("disk.img").path
            let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 / 512 &+ $0) }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return try body(path)
        }
    }

    func fileBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

    /// Through libaio (in flight, answered on completion) and synchronously.
    @Test(arguments: [true, false])
    func writesReachTheFileAndReadsComeBack(asynchronous: Bool) throws {
        try withImage { path in
            let blk = VirtioBlock(disk: try DiskImage(.init(path: path)), asynchronous: asynchronous)
            #expect((blk.aio != nil) == asynchronous)
            #expect(blk.capacity == 2048)
            let pattern = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
            try memory.write(pattern, at: Self.data)
            // Two data buffers, as a scatter list.
            let w = try request(blk, type: 1, sector: 10, data: [(Self.data, 512, false), (Self.data + 512, 512, false)])
            #expect(w.status == 0 && w.used == 1)
            #expect(Array(try fileBytes(path)[(10 * 512)..<(12 * 512)]) == pattern)
            try memory.fill(0, at: Self.data, count: 1024)
            let r = try request(blk, type: 0, sector: 10, data: [(Self.data, 1024, true)])
            #expect(r.status == 0 && r.used == 1025)
            #expect(try memory.read(at: Self.data, count: 1024) == pattern)
            let f = try request(blk, type: 4, sector: 0)
            #expect(f.status == 0 && f.used == 1 && blk.counters.flushes.load(ordering: .relaxed) == 1)
        }
    }

    @Test(arguments: [true, false])
    func nothingIsWrittenOutsideTheDisk(asynchronous: Bool) throws {
        try withImage { path in
            let before = try fileBytes(path)
            let blk = VirtioBlock(disk: try DiskImage(.init(path: path)), asynchronous: asynchronous)
            // Past the end, straddling the end, a sector number that overflows, a partial sector.
            for (sector, length) in [(2048, 512), (2047, 1024), (UInt64.max / 512 + 1, 512), (0, 100)] as [(UInt64, UInt32)] {
                let w = try request(blk, type: 1, sector: sector, data: [(Self.data, length, false)])
                #expect(w.status == 1, "write at \(sector)+\(length)")
                let r = try request(blk, type: 0, sector: sector, data: [(Self.data, length, true)])
                #expect(r.status == 1 && r.used == 1, "read at \(sector)+\(length)")
            }
            #expect(try fileBytes(path) == before)
        }
    }

    @Test func aReadOnlyDiskIsAdvertisedSoAndNeverWritten() throws {
        try withImage { path in
            let before = try fileBytes(path)
            let mtime = try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date
            let blk = VirtioBlock(disk: try DiskImage(.init(path: path, readOnly: true)))
            #expect(blk.deviceFeatures & VirtioBlock.Feature.readOnly != 0)
            try memory.fill(0xAB, at: Self.data, count: 512)
            #expect(try request(blk, type: 1, sector: 0, data: [(Self.data, 512, false)]).status == 1)
            try memory.store(UInt64(0), at: Self.data)
            try memory.store(UInt32(8), at: Self.data + 8)
            try memory.store(UInt32(0), at: Self.data + 12)
            #expect(try request(blk, type: 11, sector: 0, data: [(Self.data, 16, false)]).status == 1)
            #expect(try request(blk, type: 13, sector: 0, data: [(Self.data, 16, false)]).status == 1)
            #expect(try request(blk, type: 0, sector: 0, data: [(Self.data, 512, true)]).status == 0)
            #expect(try fileBytes(path) == before)
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date == mtime)
        }
    }

    /// cache=none: O_DIRECT, aligned guest buffers through libaio, unaligned
    /// ones (an odd address, a half-sector buffer) through a bounce buffer.
    @Test func cacheNoneBypassesThePageCacheAndBouncesUnalignedBuffers() throws {
        try withImage { path in
            let blk = VirtioBlock(disk: try DiskImage(.init(path: path, cache: .none)))
            #expect(fcntl(blk.disk.fd, F_GETFL) & 0o40000 != 0)      // O_DIRECT on x86-64
            let pattern = (0..<2048).map { UInt8(truncatingIfNeeded: $0 * 13 + 5) }
            try memory.write(pattern, at: Self.data)
            #expect(try request(blk, type: 1, sector: 100, data: [(Self.data, 2048, false)]).status == 0)
            try memory.write(pattern.reversed(), at: Self.data + 0x10003)
            let unaligned = try request(blk, type: 1, sector: 200, data: [(Self.data + 0x10003, 256, false),
                                                                       (Self.data + 0x10003 + 256, 256 + 1536, false)])
            #expect(unaligned.status == 0)
            let file = try fileBytes(path)
            #expect(Array(file[(100 * 512)..<(104 * 512)]) == pattern)
            #expect(Array(file[(200 * 512)..<(204 * 512)]) == pattern.reversed())
            try memory.fill(0, at: Self.data + 0x30001, count: 2048)
            let r = try request(blk, type: 0, sector: 100, data: [(Self.data + 0x30001, 1000, true), (Self.data + 0x30001 + 1000, 1048, true)])
            #expect(r.status == 0 && r.used == 2049)
            #expect(try memory.read(at: Self.data + 0x30001, count: 2048) == pattern)
        }
    }

    @Test func getIDAnswersTheSerial() throws {
        try withImage { path in
            let blk = VirtioBlock(disk: try DiskImage(.init(path: path, serial: "svmm-disk-7")))
            try memory.fill(0xFF, at: Self.data, count: 20)
            let r = try request(blk, type: 8, sector: 0, data: [(Self.data, 20, true)])
            #expect(r.status == 0 && r.used == 21)
            #expect(try memory.read(at: Self.data, count: 20) == Array("svmm-disk-7".utf8) + [UInt8](repeating: 0, count: 9))
        }
    }

    @Test func discardPunchesAHoleAndWriteZeroesZeroes() throws {
        try withImage(size: 4 << 20) { path in
            let blk = VirtioBlock(disk: try DiskImage(.init(path: path)))
            func blocks() -> Int { var st = stat(); stat(path, &st); return Int(st.st_blocks) }
            let allocated = blocks()
            try memory.store(UInt64(2048), at: Self.data)        // 1 MiB in
            try memory.store(UInt32(2048), at: Self.data + 8)    // 1 MiB long
            try memory.store(UInt32(0), at: Self.data + 12)
            #expect(try request(blk, type: 11, sector: 0, data: [(Self.data, 16, false)]).status == 0)
            let bytes = try fileBytes(path)
            #expect(bytes[(1 << 20)..<(2 << 20)].allSatisfy { $0 == 0 } && bytes.count == 4 << 20)
            #expect(blocks() <= allocated - 2048, "allocated 512-byte blocks \(allocated) -> \(blocks())")
            try memory.store(UInt64(6144), at: Self.data)        // 3 MiB in, 4 KiB
            try memory.store(UInt32(8), at: Self.data + 8)
            #expect(try request(blk, type: 13, sector: 0, data: [(Self.data, 16, false)]).status == 0)
            #expect(try fileBytes(path)[(3 << 20)..<((3 << 20) + 4096)].allSatisfy { $0 == 0 })
            #expect(try fileBytes(path)[((3 << 20) + 4096)] != 0)
            // Past the end, more than one segment, the unmap flag on a discard, unknown flags.
            try memory.store(UInt64(8190), at: Self.data)
            #expect(try request(blk, type: 13, sector: 0, data: [(Self.data, 16, false)]).status == 1)
            #expect(try request(blk, type: 11, sector: 0, data: [(Self.data, 32, false)]).status == 1)
            try memory.store(UInt64(0), at: Self.data)
            try memory.store(UInt32(1), at: Self.data + 12)
            #expect(try request(blk, type: 11, sector: 0, data: [(Self.data, 16, false)]).status == 2)
            try memory.store(UInt32(6), at: Self.data + 12)
            #expect(try request(blk, type: 13, sector: 0, data: [(Self.data, 16, false)]).status == 2)
        }
        // discard=off: not offered, and refused.
        try withImage { path in
            let blk = VirtioBlock(disk: try DiskImage(.init(path: path, discard: false)))
            #expect(blk.deviceFeatures & VirtioBlock.Feature.discard == 0)
            try memory.store(UInt64(0), at: Self.data)
            try memory.store(UInt32(8), at: Self.data + 8)
            try memory.store(UInt32(0), at: Self.data + 12)
            #expect(try request(blk, type: 11, sector: 0, data: [(Self.data, 16, false)]).status == 2)
        }
    }

    @Test func malformedRequestsGetAnErrorNotACrash() throws {
        try withImage { path in
            let before = try fileBytes(path)
            let blk = VirtioBlock(disk: try DiskImage(.init(path: path)))
            #expect(try request(blk, type: 0, sector: 0, data: [(Self.data, 512, true)], headerLength: 8).status == 1)
            #expect(try request(blk, type: 99, sector: 0).status == 2)
            // No device-writable byte for a status: returned unanswered, counted as an error.
            let errors = blk.counters.errors.load(ordering: .relaxed)
            #expect(try request(blk, type: 4, sector: 0, withStatus: false).used == 0)
            #expect(blk.counters.errors.load(ordering: .relaxed) == errors + 1)
            // A read whose data lies in readable buffers writes nothing into them.
            #expect(try request(blk, type: 0, sector: 0, data: [(Self.data, 512, false)]).used == 1)
            #expect(try fileBytes(path) == before)
        }
    }

    @Test func openingNeverCreatesAndLocksAgainstASecondWriter() throws {
        try withTemporaryDirectory("svmm-blk-open") { dir in
            let missing = dir.appendingPathComponent("missing.img").path
            #expect(throws: DiskError(path: missing, problem: .cannotOpen(errno: ENOENT))) { try DiskImage(.init(path: missing)) }
            #expect(!FileManager.default.fileExists(atPath: missing))
            #expect(throws: DiskError(path: dir.path, problem: .cannotOpen(errno: EISDIR))) { try DiskImage(.init(path: dir.path)) }
            #expect(throws: DiskError(path: "/dev/null", problem: .notADisk)) { try DiskImage(.init(path: "/dev/null")) }
            let path = dir.appendingPathComponent("disk.img").path
            try Data(count: 4096).write(to: URL(fileURLWithPath: path))
            do {
                let writer = try DiskImage(.init(path: path))
                #expect(throws: DiskError(path: path, problem: .locked(readOnly: false))) { try DiskImage(.init(path: path)) }
                #expect(throws: DiskError(path: path, problem: .locked(readOnly: true))) { try DiskImage(.init(path: path, readOnly: true)) }
                withExtendedLifetime(writer) {}
            }
            // The writer gone, its lock is gone; readers share, and keep a writer out.
            let reader = try DiskImage(.init(path: path, readOnly: true))
            let second = try DiskImage(.init(path: path, readOnly: true))
            #expect(throws: DiskError(path: path, problem: .locked(readOnly: false))) { try DiskImage(.init(path: path)) }
            withExtendedLifetime((reader, second)) {}
        }
    }

    @Test func diskSpecsParse() throws {
        #expect(try DiskSpec.parse("a.img") == DiskImage.Options(path: "a.img"))
        #expect(try DiskSpec.parse("a.img,cache=none").cache == DiskImage.Cache.none)
        #expect(try DiskSpec.parse("/x/b.img,ro,serial=abc-1,cache=unsafe,discard=off")
                == DiskImage.Options(path: "/x/b.img", readOnly: true, serial: "abc-1", cache: .unsafe, discard: false))
        for bad in ["", ",ro", "a.img,rw", "a.img,ro,ro", "a.img,cache=directsync", "a.img,serial=", "a.img,serial=123456789012345678901",
                    "a.img,discard=maybe", "a.img,serial=a b"] {
            #expect(throws: DiskSpecError.self, "\(bad)") { try DiskSpec.parse(bad) }
        }
    }
}
