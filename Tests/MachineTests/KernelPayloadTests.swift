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
        // The payload was staged and decompressed at the top of RAM; those pages are zero again.
        let top = memory.regions[0].end
        let stagedBytes = UInt64(payload.count + elf.count)
        #expect(try memory.read(at: top - stagedBytes, count: Int(stagedBytes)).allSatisfy { $0 == 0 })

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
}
