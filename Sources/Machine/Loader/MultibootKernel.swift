import VMCore
/// A kernel with a Multiboot (version 1) header, as kvm-unit-tests' x86
/// programs are: the header's magic 0x1BADB002 within the first 8 KiB,
/// 32-bit aligned, with its flags and a checksum that sums the three to 0
/// (the Multiboot Specification 0.6.96, §3.1). Loaded by the ELF32 program
/// headers, or by the header's own address fields (flags bit 16, the "a.out
/// kludge") when it has them.
public struct MultibootKernel: Sendable {
    public static let headerMagic: UInt32 = 0x1BAD_B002
    /// What the kernel finds in EAX at its entry.
    public static let bootloaderMagic: UInt32 = 0x2BAD_B002
    static let searchLimit = 8192
    /// Flags a loader must honour: modules page-aligned (0), memory
    /// information (1), a video mode (2). Bits 3-15 are reserved: a kernel
    /// asking for one cannot be loaded. Bit 16: the address fields are valid.
    static let pageAlignModules: UInt32 = 1 << 0
    static let videoMode: UInt32 = 1 << 2
    static let addressFields: UInt32 = 1 << 16
    static let unknownRequired: UInt32 = 0xFFF8

    public let path: String
    public let flags: UInt32
    public let segments: [ELFKernel.Segment]
    public let entry: UInt32

    /// Where the header is, when `source` has one (the checksum holding).
    static func headerOffset(in source: ImageSource) -> Int? {
        let b = source.read(0..<min(searchLimit, source.count))
        var o = 0
        while o + 12 <= b.count {
            let magic = LittleEndian.load(UInt32.self, from: b, at: o)
            if magic == headerMagic {
                let flags = LittleEndian.load(UInt32.self, from: b, at: o + 4)
                let sum = LittleEndian.load(UInt32.self, from: b, at: o + 8)
                if magic &+ flags &+ sum == 0 { return o }
            }
            o += 4
        }
        return nil
    }

    /// Whether svmm boots `source` as a Multiboot kernel: it has the header
    /// and is not an ELF64 (which goes through PVH, header or not).
    public static func isMultiboot(_ source: ImageSource) -> Bool {
        !ELFKernel.isELF64(source) && headerOffset(in: source) != nil
    }

    public init(_ source: ImageSource) throws(LoaderError) {
        let path = source.path
        self.path = path
        guard let at = Self.headerOffset(in: source) else { throw .notAKernel(path: path) }
        let header = source.read(at..<min(at + 32, source.count))
        flags = LittleEndian.load(UInt32.self, from: header, at: 4)
        if flags & Self.unknownRequired != 0 {
            throw .multibootUnsupported(path: path, what: "it requires flags 0x\(String(flags & Self.unknownRequired, radix: 16)), which Multiboot 0.6.96 does not define")
        }
        if flags & Self.videoMode != 0 {
            throw .multibootUnsupported(path: path, what: "it requires a video mode (flags bit 2); svmm has no display")
        }
        if flags & Self.addressFields != 0 {
            guard header.count == 32 else { throw .truncated(path: path, needed: at + 32, actual: source.count) }
            (segments, entry) = try Self.addressFieldLayout(header, at: at, source: source)
        } else {
            (segments, entry) = try Self.elf32Layout(source)
        }
        guard !segments.isEmpty else { throw .multibootUnsupported(path: path, what: "it has nothing to load") }
    }

    /// The a.out kludge: the file from the header's load_addr on, loaded
    /// there up to load_end_addr (0: the file's end), zeroed to bss_end_addr.
    static func addressFieldLayout(_ h: [UInt8], at offset: Int, source: ImageSource) throws(LoaderError) -> ([ELFKernel.Segment], UInt32) {
        let path = source.path
        let headerAddress = LittleEndian.load(UInt32.self, from: h, at: 12)
        let load = LittleEndian.load(UInt32.self, from: h, at: 16)
        let loadEnd = LittleEndian.load(UInt32.self, from: h, at: 20)
        let bssEnd = LittleEndian.load(UInt32.self, from: h, at: 24)
        let entry = LittleEndian.load(UInt32.self, from: h, at: 28)
        guard load <= headerAddress, Int(headerAddress - load) <= offset else {
            throw .multibootUnsupported(path: path, what: "its header's load_addr is after header_addr, or before the file's start")
        }
        guard loadEnd == 0 || loadEnd >= load else {
            throw .multibootUnsupported(path: path, what: "its header's load_end_addr is before load_addr")
        }
        let fileStart = offset - Int(headerAddress - load)
        let size = loadEnd == 0 ? source.count - fileStart : Int(loadEnd) - Int(load)
        guard fileStart + size <= source.count else {
            throw .truncated(path: path, needed: fileStart + size, actual: source.count)
        }
        guard bssEnd == 0 || UInt64(bssEnd) >= UInt64(load) + UInt64(size) else {
            throw .multibootUnsupported(path: path, what: "its header's bss_end_addr is below load_end_addr")
        }
        let memory = bssEnd == 0 ? UInt64(size) : UInt64(bssEnd) - UInt64(load)
        return ([ELFKernel.Segment(physicalAddress: UInt64(load), fileRange: fileStart..<(fileStart + size), memorySize: memory)], entry)
    }

    /// An ELF32 i386 image: its PT_LOAD segments at their physical addresses.
    static func elf32Layout(_ source: ImageSource) throws(LoaderError) -> ([ELFKernel.Segment], UInt32) {
        let path = source.path
        let b = source.read(0..<min(52, source.count))
        guard ELFKernel.isELF(b), b.count == 52, b[4] == 1, b[5] == 1, ELFKernel.u16(b, 18) == 3 else {
            throw .multibootUnsupported(path: path, what: "it is not an ELF32 i386 image and its header has no address fields (flags bit 16)")
        }
        let entry = ELFKernel.u32(b, 24)
        let phoff = Int(ELFKernel.u32(b, 28))
        let phentsize = Int(ELFKernel.u16(b, 42)), phnum = Int(ELFKernel.u16(b, 44))
        let tableEnd = phoff + phentsize * phnum
        guard phentsize >= 32, tableEnd <= source.count else { throw .truncated(path: path, needed: tableEnd, actual: source.count) }
        let table = source.read(phoff..<tableEnd)
        var segments: [ELFKernel.Segment] = []
        for i in 0..<phnum {
            let h = i * phentsize
            guard ELFKernel.u32(table, h) == 1 else { continue }   // PT_LOAD
            let offset = Int(ELFKernel.u32(table, h + 4)), paddr = UInt64(ELFKernel.u32(table, h + 12))
            let filesz = Int(ELFKernel.u32(table, h + 16)), memsz = UInt64(ELFKernel.u32(table, h + 20))
            guard offset + filesz <= source.count else { throw .truncated(path: path, needed: offset + filesz, actual: source.count) }
            if memsz == 0 && filesz == 0 { continue }
            segments.append(ELFKernel.Segment(physicalAddress: paddr, fileRange: offset..<(offset + filesz), memorySize: max(memsz, UInt64(filesz))))
        }
        return (segments, entry)
    }

    /// The lowest and highest guest-physical bytes the kernel occupies.
    public var start: UInt64 { segments.map(\.physicalAddress).min() ?? 0 }
    public var end: UInt64 { segments.map { $0.physicalAddress + $0.memorySize }.max() ?? 0 }
}
