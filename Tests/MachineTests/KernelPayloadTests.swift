import Foundation
import Testing
@testable import Machine
@testable import Stats
@testable import VMCore
@testable import Virtio

/// The bzImage fast path: a payload compressed the way Linux's build does it
/// (the system tools, then the uncompressed size appended as 4 bytes) is
/// decompressed on the host and entered through PVH.
@Suite struct KernelPayloadTests {
    /// Compresses `data` with a command reading stdin, as arch/x86/boot/compressed does.
    func compress(_ data: [UInt8], _ command: [String], appendSize: Bool = true) throws -> [UInt8] {
        try withTemporaryDirectory("svmm-payload") { dir in
        let input = dir.appendingPathComponent("in")
        try Data(data).write(to: input)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = command
        p.standardInput = try FileHandle(forReadingFrom: input)
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let compressed = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "\(command) failed")
        return [UInt8](compressed) + (appendSize ? le(UInt64(data.count), 4) : [])
    }
    }

    static let tools: [(KernelPayload.Compression, [String], Bool)] = [
        (.gzip, ["gzip", "-9", "-n", "-c"], false),      // gzip's trailer already ends with the size
        (.xz, ["xz", "--check=crc32", "-c"], true),
        (.lzma, ["xz", "--format=lzma", "-c"], true),
        (.bzip2, ["bzip2", "-9", "-c"], true),
        (.lz4, ["lz4", "-l", "-9", "-c"], true),
        (.zstd, ["zstd", "-19", "-q", "-c"], true),
    ]

    @Test(arguments: tools.map { $0.0 })
    func aCompressedPayloadIsEnteredThroughPVH(kind: KernelPayload.Compression) throws {
        let tool = Self.tools.first { $0.0 == kind }!
        // Power off from 32-bit code, padded so the compressors have something to chew.
        let code: [UInt8] = [0xB0, 5 << 2 | 0x20, 0x66, 0xBA, 0x00, 0x06, 0xEE, 0xF4] + [UInt8](repeating: 0x90, count: 100_000)
        let elf = SyntheticKernel.vmlinux(code: code)
        let payload = try compress(elf, tool.1, appendSize: tool.2)
        #expect(KernelPayload.detect(payload[...]) == kind)
        let (found, bytes) = try KernelPayload.decompress(payload[...])
        #expect(found == kind && bytes == elf)

        let image = SyntheticKernel.bzImage(payload: payload)
        let config = BootConfiguration(kernelPath: "/k", kernel: image, memoryBytes: 64 << 20)
        let memory = try GuestMemory(layout: Layout.ramRegions(size: config.memoryBytes))
        let entry = try LinuxLoader.load(config, into: memory)
        #expect(entry.mode == .pvh32 && entry.decompressed == kind && entry.rip == 0x100_0000)
        #expect(try memory.read(at: 0x100_0000, count: 8) == Array(code.prefix(8)))
        // Staged at the top of RAM, decompressed in place (2 MiB below the
        // segment's address), the segment moved up: the pages that held the
        // payload and the image are zero again.
        #expect(try memory.read(at: 0xE0_0000, count: elf.count).allSatisfy { $0 == 0 })
        let top = memory.regions[0].end
        #expect(try memory.read(at: top - UInt64(payload.count), count: payload.count).allSatisfy { $0 == 0 })

        var linux = config
        linux.bootProtocol = .linux
        let memory2 = try GuestMemory(layout: Layout.ramRegions(size: config.memoryBytes))
        #expect(try LinuxLoader.load(linux, into: memory2).mode == .linux64)
    }

    @Test func aPayloadThatCannotBeUnpackedFallsBackOrFailsAsAsked() throws {
        // An lzo-looking payload (svmm has no lzo): auto falls back, pvh refuses.
        let image = SyntheticKernel.bzImage(payload: [0x89, 0x4C, 0x5A, 0x4F] + [UInt8](repeating: 0, count: 60) + le(1000, 4))
        var config = BootConfiguration(kernelPath: "/k", kernel: image, memoryBytes: 64 << 20)
        let memory = try GuestMemory(layout: Layout.ramRegions(size: config.memoryBytes))
        #expect(try LinuxLoader.load(config, into: memory).mode == .linux64)
        config.bootProtocol = .pvh
        #expect(throws: LoaderError.noPVHPath(path: "/k", reason: "svmm cannot decompress lzo payloads")) {
            try LinuxLoader.load(config, into: memory)
        }
        // A corrupted gzip stream is reported as such.
        config.kernel = ImageSource(SyntheticKernel.bzImage(payload: [0x1F, 0x8B, 8, 0] + [UInt8](repeating: 0xAB, count: 60)), path: "/k")
        #expect(throws: LoaderError.noPVHPath(path: "/k", reason: "its gzip payload does not decompress")) {
            try LinuxLoader.load(config, into: memory)
        }
    }

    /// A kernel laid out as Linux's: the first segment 2 MiB into the file
    /// lands in place as it is decompressed; the others move down within
    /// guest RAM (one onto where another's bytes were: order matters), their
    /// bss is zeroed and the image's other pages go back to the host. Where
    /// no order of moves is safe, the image is loaded from a heap copy.
    @Test(arguments: [false, true])
    func aLinuxLayoutIsDecompressedInPlace(cycle: Bool) throws {
        let code: [UInt8] = [0xB0, 5 << 2 | 0x20, 0x66, 0xBA, 0x00, 0x06, 0xEE, 0xF4]
        func pattern(_ n: Int, _ seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7) &+ seed } }
        let segments: [(offset: Int, address: UInt64, bytes: [UInt8], memorySize: Int)] = cycle
            // Each move's destination holds the other's bytes: no safe order.
            ? [(0x20_0000, 0x100_0000, code + pattern(0x2FF8, 1), 0x3000),
               (0x21_0000, 0x102_0000, pattern(0x2000, 2), 0x2000),
               (0x22_0000, 0x101_0000, pattern(0x2000, 3), 0x2000)]
            : [(0x20_0000, 0x100_0000, code + pattern(0x2FF8, 1), 0x3000),
               (0x21_8000, 0x101_1000, pattern(0x1000, 3), 0x1000),          // onto the next one's bytes
               (0x21_0000, 0x100_8000, pattern(0x2000, 2), 0x5000)]          // down, with 12 KiB of bss
        let elf = SyntheticKernel.vmlinux(segments: segments, entry: 0x100_0000)
        let payload = try compress(elf, ["lz4", "-l", "-9", "-c"])
        let image = SyntheticKernel.bzImage(payload: payload)
        let memory = try GuestMemory(layout: Layout.ramRegions(size: 64 << 20))
        let kernel = try BzImage(ImageSource(image, path: "/k"))
        let found = try LinuxLoader.pvhKernel(inside: kernel, of: ImageSource(image, path: "/k"), memory: memory).get()
        #expect((found.source == nil) == !cycle)

        // Loaded from a file.
        let fresh = try GuestMemory(layout: Layout.ramRegions(size: 64 << 20))
        let entry = try withTemporaryDirectory("svmm-inplace") { dir in
            let file = dir.appendingPathComponent("bzImage")
            try Data(image).write(to: file)
            let config = BootConfiguration(kernel: try ImageSource(path: file.path), memoryBytes: 64 << 20)
            return try LinuxLoader.load(config, into: fresh)
        }
        #expect(entry.mode == .pvh32 && entry.rip == 0x100_0000)
        var occupied: [Range<UInt64>] = []
        for s in segments {
            #expect(try fresh.read(at: s.address, count: s.bytes.count) == s.bytes, "segment at \(s.address)")
            #expect(try fresh.read(at: s.address + UInt64(s.bytes.count), count: s.memorySize - s.bytes.count).allSatisfy { $0 == 0 })
            occupied.append(s.address..<s.address + UInt64(s.memorySize))
        }
        // Every other byte where the image was decompressed reads zero.
        let area = 0xE0_0000..<(0xE0_0000 + UInt64(elf.count))
        let bytes = try fresh.read(at: area.lowerBound, count: elf.count)
        let stray = area.filter { a in bytes[Int(a - area.lowerBound)] != 0 && !occupied.contains { $0.contains(a) } }
        let top = fresh.regions[0].end
        #expect(try fresh.read(at: top - UInt64(payload.count), count: payload.count).allSatisfy { $0 == 0 }, "the staged payload")
        let first = stray.first.map { String($0, radix: 16) } ?? "none"
        #expect(stray.isEmpty, "\(stray.count) bytes of the image left behind, the first at \(first)")
    }

    /// lz4 legacy streams of several blocks: a kernel-sized one (8 MiB
    /// blocks, decompressed on several threads, each block at its offset),
    /// and frames of smaller blocks concatenated (decompressed in order).
    @Test func lz4LegacyBlocksDecompressAtTheirOffsets() throws {
        var state: UInt32 = 12345
        let data: [UInt8] = (0..<(17 << 20) + 12345).map { i in
            state = state &* 1_103_515_245 &+ 12345
            return i % 7 == 0 ? UInt8(truncatingIfNeeded: state >> 16) : UInt8(truncatingIfNeeded: i >> 12)
        }
        let payload = try compress(data, ["lz4", "-l", "-1", "-c"])
        let (kind, out) = try KernelPayload.decompress(payload[...])
        #expect(kind == .lz4 && out.count == data.count)
        let same = out == data   // compared outside #expect, which would print 17 MiB on failure
        #expect(same, "the first difference at \(out.indices.first { out[$0] != data[$0] } ?? -1)")
        // That stream takes the parallel path (not the in-order fallback).
        var direct = [UInt8](repeating: 0, count: data.count)
        let parallel = payload.withUnsafeBufferPointer { src in
            direct.withUnsafeMutableBufferPointer { dst in
                let stream = UnsafeBufferPointer(rebasing: src[0..<(src.count - 4)])
                return KernelPayload.lz4LegacyBlocks(stream).map { KernelPayload.unlz4InParallel(stream, $0, dst) }
            }
        }
        let directSame = direct == data
        #expect(parallel == true && directSame)

        let a = Array(data.prefix(1 << 20)), b = Array(data[(1 << 20)..<(3 << 20)])
        let frames = try compress(a, ["lz4", "-l", "-c"], appendSize: false)
            + compress(b, ["lz4", "-l", "-c"], appendSize: false) + le(UInt64(a.count + b.count), 4)
        let (_, joined) = try KernelPayload.decompress(frames[...])
        let joinedSame = joined == a + b
        #expect(joinedSame)
        // A corrupt block fails the whole stream.
        var corrupt = payload
        corrupt[payload.count / 2] ^= 0xFF
        corrupt[payload.count / 2 + 1] ^= 0xFF
        #expect(throws: KernelPayload.Failure.corrupt(.lz4)) { try KernelPayload.decompress(corrupt[...]) }
    }
}
