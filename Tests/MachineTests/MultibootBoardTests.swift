import Testing
import Synchronization
@testable import Machine
@testable import VMCore

/// The Multiboot board: images built here byte by byte (the header's
/// checks, both ways of loading, the information the kernel finds at EBX),
/// and kvm-unit-tests' devices driven at their edges as a hostile guest would.
@Suite struct MultibootBoardTests {
    static func header(flags: UInt32, fields: [UInt32] = []) -> [UInt8] {
        var h = le(UInt64(MultibootKernel.headerMagic), 4) + le(UInt64(flags), 4)
        h += le(UInt64(UInt32(0) &- MultibootKernel.headerMagic &- flags), 4)
        for f in fields { h += le(UInt64(f), 4) }
        return h
    }

    /// An a.out-kludge image: the header at file offset 64, the file loaded at `load`.
    static func kludge(load: UInt32, code: [UInt8], bss: UInt32 = 0x1000, flags: UInt32 = 1 << 16) -> [UInt8] {
        var image = [UInt8](repeating: 0x90, count: 64)
        let loadEnd = load + 64 + 32 + UInt32(code.count)
        image += header(flags: flags, fields: [load + 64, load, loadEnd, loadEnd + bss, load + 96])
        return image + code
    }

    /// An ELF32 i386 image with one PT_LOAD (file offset 0x100, at `paddr`) and the header in it.
    static func elf32(paddr: UInt32, body: [UInt8], memsz extra: UInt32 = 0x2000, machine: UInt16 = 3) -> [UInt8] {
        var e = [0x7F, 0x45, 0x4C, 0x46, 1, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        e += le(2, 2) + le(UInt64(machine), 2) + le(1, 4) + le(UInt64(paddr + 12), 4)   // type, machine, version, entry
        e += le(52, 4) + le(0, 4) + le(0, 4) + le(52, 2) + le(32, 2) + le(1, 2)          // phoff, shoff, flags, ehsize, phentsize, phnum
        e += le(0, 2) + le(0, 2) + le(0, 2)
        let segment = header(flags: 0) + body
        e += le(1, 4) + le(0x100, 4) + le(UInt64(paddr), 4) + le(UInt64(paddr), 4)
        e += le(UInt64(segment.count), 4) + le(UInt64(UInt32(segment.count) + extra), 4) + le(7, 4) + le(0x1000, 4)
        e += [UInt8](repeating: 0, count: 0x100 - e.count)
        return e + segment
    }

    func config(_ kernel: [UInt8], initrd: [UInt8]? = nil, cmdline: String = "", memory: UInt64 = 64 << 20) -> BootConfiguration {
        BootConfiguration(kernelPath: "/k", kernel: kernel, initrdPath: initrd == nil ? nil : "/m", initrd: initrd,
                          commandLine: cmdline, cpus: 1, memoryBytes: memory)
    }

    func load(_ c: BootConfiguration) throws -> (LinuxLoader.EntryState, GuestMemory) {
        let memory = try GuestMemory(layout: Layout.ramRegions(size: c.memoryBytes))
        return (try LinuxLoader.load(c, into: memory), memory)
    }

    func loadError(_ c: BootConfiguration) -> LoaderError? {
        do { _ = try load(c); return nil } catch { return error as? LoaderError }
    }

    @Test func anELF32IsLoadedByItsProgramHeadersAndEnteredWithTheMagic() throws {
        let body: [UInt8] = [0xF4, 0xEB, 0xFD] + [UInt8](repeating: 0xAB, count: 500)
        let module = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let (entry, memory) = try load(config(Self.elf32(paddr: 0x40_0000, body: body), initrd: module, cmdline: "x=1 y"))
        #expect(entry.mode == .multiboot32 && entry.rip == 0x40_000C && entry.bootInfo == Layout.multibootInfo)
        #expect(try memory.read(at: 0x40_000C, count: body.count) == body)
        #expect(try memory.read(at: 0x40_000C + UInt64(body.count), count: 0x2000) == [UInt8](repeating: 0, count: 0x2000), "bss zeroed")
        let info = Layout.multibootInfo
        #expect(try memory.load(UInt32.self, at: info) == 0x24D)
        #expect(try memory.load(UInt32.self, at: info + 4) == 639)
        #expect(try memory.load(UInt32.self, at: info + 8) == (64 << 10) - 1024)
        let cmdline = UInt64(try memory.load(UInt32.self, at: info + 16))
        #expect(try memory.read(at: cmdline, count: 10) == Array("/k x=1 y\0".utf8) + [0x2F], "argv[0], the arguments, then the module's name")
        #expect(try memory.load(UInt32.self, at: info + 20) == 1)
        let mod = UInt64(try memory.load(UInt32.self, at: info + 24))
        let start = UInt64(try memory.load(UInt32.self, at: mod)), end = UInt64(try memory.load(UInt32.self, at: mod + 4))
        #expect(start % 4096 == 0 && end - start == UInt64(module.count) && start >= 0x40_0000 + 0x3000)
        #expect(try memory.read(at: start, count: module.count) == module)
        #expect(try memory.read(at: UInt64(try memory.load(UInt32.self, at: mod + 8)), count: 3) == Array("/m\0".utf8))
        #expect(try memory.read(at: UInt64(try memory.load(UInt32.self, at: info + 64)), count: 5) == Array("svmm\0".utf8))
        // The memory map: entries of size 20, the last RAM to the end.
        let mapLength = try memory.load(UInt32.self, at: info + 44), map = UInt64(try memory.load(UInt32.self, at: info + 48))
        #expect(mapLength == 3 * 24)
        #expect(try memory.load(UInt32.self, at: map + 48) == 20)
        #expect(try memory.load(UInt64.self, at: map + 52) == 0x10_0000 && memory.totalSize == (64 << 20))
        #expect(try memory.load(UInt64.self, at: map + 60) == (64 << 20) - 0x10_0000)
        #expect(try memory.load(UInt32.self, at: map + 68) == 1)
    }

    @Test func theAoutKludgeLoadsTheFileFromLoadAddrAndZeroesToBssEnd() throws {
        let code: [UInt8] = [0xF4, 0xEB, 0xFD, 1, 2, 3]
        let image = Self.kludge(load: 0x20_0000, code: code)
        let (entry, memory) = try load(config(image))
        #expect(entry.rip == 0x20_0060)
        #expect(try memory.read(at: 0x20_0000, count: image.count) == image)
        #expect(try memory.read(at: 0x20_0000 + UInt64(image.count), count: 0x1000) == [UInt8](repeating: 0, count: 0x1000))
        #expect(try memory.load(UInt32.self, at: Layout.multibootInfo) & (1 << 3) == 0, "no module flag without an initrd")
    }

    @Test func headersAKernelCannotBeBootedFromAreRefusedInOneLine() throws {
        let code: [UInt8] = [0xF4]
        let video = loadError(config(Self.kludge(load: 0x20_0000, code: code, flags: 1 << 16 | 1 << 2)))
        #expect(video == .multibootUnsupported(path: "/k", what: "it requires a video mode (flags bit 2); svmm has no display"))
        let reserved = loadError(config(Self.kludge(load: 0x20_0000, code: code, flags: 1 << 16 | 1 << 5)))
        #expect(reserved?.description == "/k is a Multiboot kernel svmm cannot load: it requires flags 0x20, which Multiboot 0.6.96 does not define")
        // Below 1 MiB (where svmm keeps the information and ACPI), or past low RAM.
        #expect(loadError(config(Self.kludge(load: 0x8_0000, code: code))) == .multibootOverlap(path: "/k", start: 0x8_0000, end: 0x8_0000 + 64 + 32 + 1 + 0x1000))
        #expect(loadError(config(Self.elf32(paddr: 0x3FF_F000, body: code))) != nil)
        // Not i386, and no address fields to fall back on.
        #expect(loadError(config(Self.elf32(paddr: 0x40_0000, body: code, machine: 0x3E)))
                == .multibootUnsupported(path: "/k", what: "it is not an ELF32 i386 image and its header has no address fields (flags bit 16)"))
        // load_addr after header_addr.
        var bad = Self.kludge(load: 0x20_0000, code: code)
        bad.replaceSubrange(64 + 16..<64 + 20, with: le(0x20_0100, 4))
        #expect(loadError(config(bad)) == .multibootUnsupported(path: "/k", what: "its header's load_addr is after header_addr, or before the file's start"))
        // bss_end_addr below the load address, and below load_end_addr.
        for bssEnd: UInt32 in [0x1000, 0x20_0010] {
            var b = Self.kludge(load: 0x20_0000, code: code)
            b.replaceSubrange(64 + 24..<64 + 28, with: le(UInt64(bssEnd), 4))
            #expect(loadError(config(b)) == .multibootUnsupported(path: "/k", what: "its header's bss_end_addr is below load_end_addr"))
        }
        // load_end_addr past the file's end, or before load_addr.
        var past = Self.kludge(load: 0x20_0000, code: code)
        past.replaceSubrange(64 + 20..<64 + 24, with: le(0x20_1000, 4))
        #expect(loadError(config(past)) == .truncated(path: "/k", needed: 0x1000, actual: past.count))
        var before = Self.kludge(load: 0x20_0000, code: code)
        before.replaceSubrange(64 + 20..<64 + 24, with: le(0x10_0000, 4))
        #expect(loadError(config(before)) == .multibootUnsupported(path: "/k", what: "its header's load_end_addr is before load_addr"))
    }

    @Test func aBadChecksumOrAHeaderPast8KiBIsNoMultibootKernel() {
        var sum = Self.kludge(load: 0x20_0000, code: [0xF4])
        sum[64 + 8] ^= 1
        #expect(!MultibootKernel.isMultiboot(ImageSource(sum)))
        let late = [UInt8](repeating: 0, count: 8192) + Self.header(flags: 0)
        #expect(!MultibootKernel.isMultiboot(ImageSource(late)))
        #expect(MultibootKernel.isMultiboot(ImageSource([UInt8](repeating: 0, count: 8180) + Self.header(flags: 0))))
        // An ELF64 with the header (a Xen-style kernel) goes through PVH, not Multiboot.
        let elf64 = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 56) + Self.header(flags: 0)
        #expect(!MultibootKernel.isMultiboot(ImageSource(elf64)))
        #expect(MultibootKernel.isMultiboot(ImageSource(Self.elf32(paddr: 0x40_0000, body: [0xF4]))))
        // Misaligned: the specification asks for a 32-bit aligned header.
        #expect(!MultibootKernel.isMultiboot(ImageSource([0, 0] + Self.header(flags: 0))))
    }

    @Test func fwCfgReadsEachItemLittleEndianAndZeroPastItsEnd() {
        let fw = FirmwareConfig(cpus: 3, ramBytes: 0x1_4000_0000)
        func select(_ key: UInt16) {
            let v: [UInt8] = [UInt8(key & 0xFF), UInt8(key >> 8)]
            v.withUnsafeBytes { fw.write(address: 0x510, data: $0) }
        }
        func byte() -> UInt8 {
            var b: [UInt8] = [0xEE]
            b.withUnsafeMutableBytes { fw.read(address: 0x511, data: $0) }
            return b[0]
        }
        select(0); #expect((0..<5).map { _ in byte() } == Array("QEMU".utf8) + [0])
        select(5); #expect((0..<3).map { _ in byte() } == [3, 0, 0])
        select(3); #expect((0..<8).map { _ in byte() } == [0, 0, 0, 0x40, 1, 0, 0, 0])
        select(0x1234); #expect(byte() == 0, "an unknown key reads as zeros")
        // Other widths and ports change nothing and read 0.
        select(5)
        [UInt8(0)].withUnsafeBytes { fw.write(address: 0x510, data: $0) }
        var wide: [UInt8] = [0xEE, 0xEE]
        wide.withUnsafeMutableBytes { fw.read(address: 0x511, data: $0) }
        #expect(wide == [0, 0] && byte() == 3)
    }

    @Test func debugExitStatusIsValueTimesTwoPlusOneInEightBits() {
        #expect(DebugExit.status(0) == 1 && DebugExit.status(1) == 3 && DebugExit.status(38) == 77)
        #expect(DebugExit.status(0x80) == 1 && DebugExit.status(0xFFFF_FFFF) == 255)
    }

    @Test func pmTimerTicksAt3579545HzIn24BitsAndWraps() {
        #expect(PMTimer.ticks(at: 0) == 0)
        #expect(PMTimer.ticks(at: 1_000_000_000) == 3_579_545)
        #expect(PMTimer.ticks(at: 500_000_000) == 1_789_772)
        // 2^24 ticks are 4.687 s: just before and just after the wrap.
        let wrap = UInt64(1 << 24) * 1_000_000_000 / PMTimer.hertz
        #expect(PMTimer.ticks(at: wrap - 1000) > 0xFF_F000 && PMTimer.ticks(at: wrap + 1000) < 0x1000)
        // Never past 24 bits, after a year of uptime too.
        #expect(PMTimer.ticks(at: 365 * 86_400 * 1_000_000_000 + 123_456_789) <= 0xFF_FFFF)
    }

    func access(_ d: any BusDevice, _ address: UInt64, write value: UInt64? = nil, width: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0xEE, count: width)
        if let value { for i in 0..<width { b[i] = UInt8(truncatingIfNeeded: value >> (8 * i)) } }
        b.withUnsafeMutableBytes { value == nil ? d.read(address: address, data: $0) : d.write(address: address, data: UnsafeRawBufferPointer($0)) }
        return b
    }

    @Test func pcTestdevAccessesAtTheEdgesStayInside() {
        var lines: [(UInt32, Bool)] = []
        let lock = Mutex<[(UInt32, Bool)]>([])
        let d = PCTestDevice(setIRQ: { l, h in lock.withLock { $0.append((l, h)) } }, flushPage: { _ in })
        _ = access(d, 0xe0, write: 0x4433_2211, width: 4)
        // A word at the latch's last byte: the byte past it reads 0, and a write there changes only the last byte.
        #expect(access(d, 0xe3, width: 2) == [0x44, 0])
        _ = access(d, 0xe3, write: 0xBBAA, width: 2)
        #expect(access(d, 0xe0, width: 4) == [0x11, 0x22, 0x33, 0xAA])
        #expect(access(d, 0xe8, width: 8) == [0x11, 0x22, 0x33, 0xAA, 0, 0, 0, 0])
        // ioram: an 8-byte access at its last 4 bytes touches only those.
        _ = access(d, PCTestDevice.ioRAM + 0xFFFC, write: 0x1122_3344_5566_7788, width: 8)
        #expect(access(d, PCTestDevice.ioRAM + 0xFFF8, width: 8) == [0, 0, 0, 0, 0x88, 0x77, 0x66, 0x55])
        // IRQ lines: byte writes only; the level is whether the byte is nonzero.
        _ = access(d, 0x2000 + 10, write: 7, width: 1)
        _ = access(d, 0x2000 + 10, write: 1, width: 2)
        _ = access(d, 0x2000 + 23, write: 0, width: 1)
        lines = lock.withLock { $0 }
        #expect(lines.map(\.0) == [10, 23] && lines.map(\.1) == [true, false])
    }

    @Test func pciTestdevHeadersCountsAndConfigurationSpace() {
        let d = PCITestDevice(memoryBase: Layout.testDeviceBAR, portBase: Layout.testDevicePorts)
        let mmio = d.memoryWindow!, io = d.portWindow!
        #expect(access(mmio, Layout.testDeviceBAR + 16, width: 4) == [0, 0, 0, 0], "no test selected: zeros")
        _ = access(io, 0xC000, write: 2, width: 1)                   // portio-datamatch-eventfd
        let name = Array("portio-datamatch-eventfd".utf8)
        let header = (0..<(16 + name.count + 1)).map { access(io, 0xC000 + UInt64($0), width: 1)[0] }
        #expect(Array(header[0..<16]) == [5, 1, 0, 0, 133, 0, 0, 0, 0xFA, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(header[16..<(16 + name.count)]) == name && header.last == 0)
        _ = access(io, 0xC000 + 133, write: 0xFA, width: 1)
        _ = access(io, 0xC000 + 133, write: 0x11, width: 1)          // not the data: not counted
        _ = access(io, 0xC000 + 132, write: 0xFA, width: 4)          // not the offset (its second byte lands there, 0x00: not counted)
        #expect(access(io, 0xC000 + 12, width: 4) == [1, 0, 0, 0])
        // The memory BAR's tests are its own; selecting one there resets the current test.
        _ = access(mmio, Layout.testDeviceBAR, write: 1, width: 1)  // mmio-wildcard-eventfd: any byte counts
        _ = access(mmio, Layout.testDeviceBAR + 2049, write: 0x77, width: 1)
        #expect(access(mmio, Layout.testDeviceBAR + 12, width: 4) == [1, 0, 0, 0])
        _ = access(mmio, Layout.testDeviceBAR, write: 3, width: 1)  // past the last: none
        #expect(access(mmio, Layout.testDeviceBAR + 16, width: 8) == [0, 0, 0, 0, 0, 0, 0, 0])
        // Configuration space: ids, class, BARs sized and kept.
        func config(_ offset: Int, _ width: Int) -> UInt32 {
            var b = [UInt8](repeating: 0, count: width)
            b.withUnsafeMutableBytes { d.readConfig(offset, $0) }
            return b.reversed().reduce(0) { $0 << 8 | UInt32($1) }
        }
        func write(_ offset: Int, _ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { d.writeConfig(offset, $0) } }
        #expect(config(0, 4) == 0x0005_1B36 && config(0x0B, 1) == 0xFF && config(0x10, 4) == 0xDF00_0000 && config(0x14, 4) == 0xC001)
        write(0x10, 0xFFFF_FFFF); write(0x14, 0xFFFF_FFFF)
        #expect(config(0x10, 4) == 0xFFFF_F000 && config(0x14, 4) == 0xFF01)
        write(0x10, 0xDF00_0000); write(0x14, 0xC000)
        #expect(config(0x10, 4) == 0xDF00_0000 && config(0x14, 4) == 0xC001)
        #expect(config(0xFC, 4) == 0, "past the header: zeros")
    }
}
