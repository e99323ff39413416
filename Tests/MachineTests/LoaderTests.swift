import Testing
import Glibc
@testable import Machine
@testable import Stats
@testable import VMCore
@testable import Virtio

@Suite struct LoaderTests {
    func config(_ kernel: [UInt8], initrd: [UInt8]? = nil, cmdline: String = "console=ttyS0",
                memory: UInt64 = 64 << 20) -> BootConfiguration {
        BootConfiguration(kernelPath: "/k", kernel: kernel, initrdPath: initrd == nil ? nil : "/i", initrd: initrd,
                          commandLine: cmdline, cpus: 2, memoryBytes: memory)
    }

    func loadError(_ c: BootConfiguration) throws -> LoaderError? {
        let memory = try GuestMemory(layout: Layout.ramRegions(size: c.memoryBytes))
        do {
            _ = try LinuxLoader.load(c, into: memory)
            return nil
        } catch let e as LoaderError {
            return e
        }
    }

    @Test func refusesAFileThatIsNotAKernel() throws {
        let e = try loadError(config(Array("#!/bin/sh\necho not a kernel\n".utf8)))
        #expect(e == .notAKernel(path: "/k"))
        #expect(e?.description == "/k is not a Linux kernel (no bzImage 'HdrS' header and not an ELF vmlinux)")
        #expect(try loadError(config([UInt8](repeating: 0, count: 4096))) == .notAKernel(path: "/k"))
    }

    @Test func refusesATruncatedBzImage() throws {
        let image = SyntheticKernel.bzImage(code: [UInt8](repeating: 0xF4, count: 4096))
        let e = try loadError(config(Array(image.prefix(image.count - 100))))
        guard case let .truncated(_, needed, actual) = e else { Issue.record("got \(String(describing: e))"); return }
        #expect(needed == image.count && actual == image.count - 100)
        #expect(e!.description.contains("is truncated"))
    }

    @Test func refusesAnOldBootProtocol() throws {
        let e = try loadError(config(SyntheticKernel.bzImage(version: 0x0204)))
        #expect(e == .protocolTooOld(path: "/k", version: 0x0204))
        #expect(e?.description == "/k uses Linux boot protocol 2.04, svmm needs 2.06 or newer: use a kernel from 2.6.22 on")
    }

    @Test func refusesAKernelWithoutA64BitEntry() throws {
        let e = try loadError(config(SyntheticKernel.bzImage(xloadflags: 0)))
        #expect(e == .no64BitEntry(path: "/k"))
        #expect(e?.description.contains("no 64-bit entry point") == true)
    }

    @Test func refusesACommandLineLongerThanTheKernelAccepts() throws {
        let e = try loadError(config(SyntheticKernel.bzImage(commandLineSize: 255), cmdline: String(repeating: "x", count: 300)))
        #expect(e == .commandLineTooLong(length: 300, limit: 255))
        #expect(e?.description == "the kernel command line is 300 bytes, this kernel accepts at most 255")
    }

    @Test func refusesAnInitrdAboveWhatTheKernelCanAddress() throws {
        // initrd_addr_max at 8 MiB, RAM 64 MiB: a 16 MiB initrd cannot go below 8 MiB.
        let e = try loadError(config(SyntheticKernel.bzImage(initrdAddressMax: 0x7F_FFFF), initrd: [UInt8](repeating: 1, count: 16 << 20)))
        guard case .initrdTooLarge = e else { Issue.record("got \(String(describing: e))"); return }
        #expect(e!.description.contains("MiB of RAM the kernel can address for an initrd"))
    }

    @Test func refusesRAMTooSmallForKernelAndInitrd() throws {
        let e = try loadError(config(SyntheticKernel.bzImage(), initrd: [UInt8](repeating: 1, count: 40 << 20), memory: 32 << 20))
        guard case .memoryTooSmall = e else { Issue.record("got \(String(describing: e))"); return }
        #expect(e!.description.contains("is too small for the kernel and initrd"))
        let big = try loadError(config(SyntheticKernel.bzImage(initSize: 0x4000_0000), memory: 32 << 20))
        guard case .memoryTooSmall = big else { Issue.record("got \(String(describing: big))"); return }
    }

    @Test func refusesAnELFWithoutAPVHNote() throws {
        let e = try loadError(config(SyntheticKernel.vmlinux(pvhNote: false)))
        #expect(e == .noPVHNote(path: "/k"))
        #expect(e?.description.contains("without a PVH entry note") == true)
        let cut = SyntheticKernel.vmlinux()
        guard case .truncated = try loadError(config(Array(cut.prefix(100)))) else { Issue.record("truncated ELF accepted"); return }
    }

    @Test func buildsTheZeroPage() throws {
        let initrd = [UInt8](repeating: 7, count: 5000)
        let c = config(SyntheticKernel.bzImage(code: [0xF4]), initrd: initrd, cmdline: "console=ttyS0 quiet")
        let memory = try GuestMemory(layout: Layout.ramRegions(size: c.memoryBytes))
        let entry = try LinuxLoader.load(c, into: memory)
        #expect(entry.mode == .linux64 && entry.rip == 0x10_0200 && entry.bootInfo == Layout.zeroPage)
        let zp = Layout.zeroPage
        #expect(try memory.read(at: zp + 0x202, count: 4) == Array("HdrS".utf8))
        #expect(try memory.load(UInt8.self, at: zp + 0x210) == 0xFF)                     // type_of_loader
        #expect(try memory.load(UInt32.self, at: zp + 0x228) == UInt32(Layout.commandLine))
        #expect(try memory.read(at: Layout.commandLine, count: 20) == Array("console=ttyS0 quiet\0".utf8))
        let rdAddress = try memory.load(UInt32.self, at: zp + 0x218)
        #expect(try memory.load(UInt32.self, at: zp + 0x21C) == 5000)
        #expect(rdAddress % 4096 == 0 && UInt64(rdAddress) + 5000 <= 64 << 20)
        #expect(try memory.read(at: UInt64(rdAddress), count: 5000) == initrd)
        #expect(try memory.load(UInt64.self, at: zp + 0x70) == Layout.acpiStart)          // acpi_rsdp_addr
        // e820: low RAM, BIOS area reserved, RAM from 1 MiB to the end.
        #expect(try memory.load(UInt8.self, at: zp + 0x1E8) == 3)
        let third = zp + 0x2D0 + 40
        #expect(try memory.load(UInt64.self, at: third) == 0x10_0000)
        #expect(try memory.load(UInt64.self, at: third + 8) == (64 << 20) - 0x10_0000)
        #expect(try memory.load(UInt32.self, at: third + 16) == 1)
        // The kernel's 64-bit entry code is where the entry points.
        #expect(try memory.read(at: entry.rip, count: 1) == [0xF4])
    }

    @Test func splitsRAMAroundThePCIHole() throws {
        let regions = Layout.ramRegions(size: 4 << 30)
        #expect(regions.count == 2)
        #expect(regions[0].guestAddress == 0 && regions[0].size == 0xC000_0000)
        #expect(regions[1].guestAddress == 1 << 32 && regions[1].size == 0x4000_0000)
        let memory = try GuestMemory(layout: regions)
        let map = E820Entry.map(for: memory)
        #expect(map.last == E820Entry(address: 1 << 32, size: 0x4000_0000, kind: .ram))
        #expect(!map.contains { $0.address < 1 << 32 && $0.address + $0.size > 0xC000_0000 })
    }

    @Test func buildsThePVHStartInfo() throws {
        let c = config(SyntheticKernel.vmlinux(code: [0xF4]), initrd: [1, 2, 3])
        let memory = try GuestMemory(layout: Layout.ramRegions(size: c.memoryBytes))
        let entry = try LinuxLoader.load(c, into: memory)
        #expect(entry.mode == .pvh32 && entry.rip == 0x100_0000 && entry.bootInfo == Layout.pvhStartInfo)
        let si = Layout.pvhStartInfo
        #expect(try memory.load(UInt32.self, at: si) == 0x336E_C578)
        #expect(try memory.load(UInt32.self, at: si + 4) == 1)                            // version
        #expect(try memory.load(UInt32.self, at: si + 12) == 1)                           // nr_modules
        let modlist = try memory.load(UInt64.self, at: si + 16)
        let rd = try memory.load(UInt64.self, at: modlist)
        #expect(try memory.load(UInt64.self, at: modlist + 8) == 3)
        #expect(try memory.read(at: rd, count: 3) == [1, 2, 3])
        #expect(try memory.load(UInt64.self, at: si + 24) == Layout.commandLine)
        #expect(try memory.load(UInt64.self, at: si + 32) == Layout.acpiStart)
        #expect(try memory.load(UInt32.self, at: si + 48) == 3)                           // memmap entries
        #expect(try memory.read(at: 0x100_0000, count: 1) == [0xF4])
    }
}

/// Kernels and initrds given as files are read straight into guest RAM.
@Suite struct ImageFileTests {
    func temporaryFile(_ bytes: [UInt8]) throws -> String {
        var template = Array("/tmp/svmm-image-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        try #require(fd >= 0)
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        try #require(written == bytes.count)
        return String(cString: template.map { UInt8(bitPattern: $0) })
    }

    @Test func aKernelAndInitrdFromFilesLandInGuestRAMByteForByte() throws {
        let kernelBytes = SyntheticKernel.bzImage(code: (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 7) })
        let initrdBytes = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 3) }
        let kernelPath = try temporaryFile(kernelBytes), initrdPath = try temporaryFile(initrdBytes)
        defer { unlink(kernelPath); unlink(initrdPath) }
        let config = BootConfiguration(kernel: try ImageSource(path: kernelPath), initrd: try ImageSource(path: initrdPath),
                                       memoryBytes: 64 << 20)
        let memory = try GuestMemory(layout: Layout.ramRegions(size: config.memoryBytes))
        _ = try LinuxLoader.load(config, into: memory)

        let image = try BzImage(ImageSource(kernelBytes))
        let loaded = try memory.read(at: image.loadAddress, count: image.protectedModeKernel.count)
        #expect(loaded == Array(kernelBytes[image.protectedModeKernel]))
        let initrdAddress = UInt64(try memory.load(UInt32.self, at: Layout.zeroPage + 0x218))
        let initrdSize = Int(try memory.load(UInt32.self, at: Layout.zeroPage + 0x21C))
        #expect(initrdSize == initrdBytes.count)
        #expect(try memory.read(at: initrdAddress, count: initrdSize) == initrdBytes)
    }

    @Test func aFileShorterThanItsHeaderSaysIsTruncatedNotGarbage() throws {
        let kernelBytes = SyntheticKernel.bzImage(code: [UInt8](repeating: 0x90, count: 8192))
        let path = try temporaryFile(kernelBytes)
        defer { unlink(path) }
        let source = try ImageSource(path: path)
        truncate(path, off_t(kernelBytes.count - 4096))   // shrinks after svmm opened it
        let memory = try GuestMemory(size: 64 << 20)
        let image = try BzImage(source)
        #expect(throws: LoaderError.truncated(path: path, needed: kernelBytes.count, actual: kernelBytes.count - 4096)) {
            try source.copy(image.protectedModeKernel, into: memory, at: image.loadAddress)
        }
    }

    @Test func aDirectoryOrMissingFileIsRefusedWithItsErrno() {
        #expect(throws: ImageOpenError.self) { try ImageSource(path: "/tmp") }
        do { _ = try ImageSource(path: "/tmp") } catch { #expect(error.errno == EISDIR) }
        do { _ = try ImageSource(path: "/nonexistent/kernel") } catch { #expect(error.errno == ENOENT) }
    }
}
