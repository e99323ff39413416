import VMCore
/// An uncompressed Linux `vmlinux` (ELF64) entered through PVH: its PT_LOAD
/// segments and the 32-bit entry from the XEN_ELFNOTE_PHYS32_ENTRY note
/// (xen/include/public/elfnote.h; the PVH boot ABI, xen docs/misc/pvh.pandoc).
public struct ELFKernel: Sendable {
    public struct Segment: Sendable {
        public let physicalAddress: UInt64
        public let fileRange: Range<Int>
        public let memorySize: UInt64
    }

    public let path: String
    public let segments: [Segment]
    public let pvhEntry: UInt64

    static let pvhNoteType: UInt32 = 18

    public static func isELF(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 4 && bytes[0..<4] == [0x7F, 0x45, 0x4C, 0x46]
    }

    public static func isELF(_ source: ImageSource) -> Bool { isELF(source.read(0..<4)) }

    /// ELFCLASS64: the only ELF class booted through PVH.
    public static func isELF64(_ source: ImageSource) -> Bool {
        let b = source.read(0..<5)
        return isELF(b) && b.count == 5 && b[4] == 2
    }

    /// Validates the headers and finds the PVH entry; reads only the ELF
    /// header, the program headers and the notes.
    public init(_ source: ImageSource) throws(LoaderError) {
        let path = source.path
        self.path = path
        let b = source.read(0..<64)
        guard Self.isELF(b) else { throw .notAKernel(path: path) }
        guard b.count >= 64 else { throw .truncated(path: path, needed: 64, actual: b.count) }
        // ELFCLASS64, little-endian, x86-64.
        guard b[4] == 2, b[5] == 1, Self.u16(b, 18) == 0x3E else { throw .no64BitEntry(path: path) }
        let phoff = Self.u64(b, 32)
        let phentsize = Int(Self.u16(b, 54)), phnum = Int(Self.u16(b, 56))
        let tableEnd = phoff.addingReportingOverflow(UInt64(phentsize * phnum))
        guard phentsize >= 56, !tableEnd.overflow, tableEnd.partialValue <= UInt64(source.count) else {
            throw .truncated(path: path, needed: Int(clamping: tableEnd.partialValue), actual: source.count)
        }
        let table = source.read(Int(phoff)..<Int(tableEnd.partialValue))
        var segments: [Segment] = []
        var entry: UInt64?
        for i in 0..<phnum {
            let h = i * phentsize
            let type = Self.u32(table, h)
            let offset = Self.u64(table, h + 8), paddr = Self.u64(table, h + 24)
            let filesz = Self.u64(table, h + 32), memsz = Self.u64(table, h + 40)
            let end = offset.addingReportingOverflow(filesz)
            guard !end.overflow, end.partialValue <= UInt64(source.count) else {
                throw .truncated(path: path, needed: Int(clamping: end.partialValue), actual: source.count)
            }
            let range = Int(offset)..<Int(end.partialValue)
            if type == 1 {   // PT_LOAD
                segments.append(Segment(physicalAddress: paddr, fileRange: range, memorySize: max(memsz, filesz)))
            } else if type == 4, entry == nil, range.count <= 1 << 20 {   // PT_NOTE
                let notes = source.read(range)
                entry = Self.pvhEntry(in: notes, 0..<notes.count)
            }
        }
        guard let entry else { throw .noPVHNote(path: path) }
        guard !segments.isEmpty else { throw .notAKernel(path: path) }
        self.segments = segments
        self.pvhEntry = entry
    }

    /// Walks the notes in `range` for name "Xen", type 18.
    static func pvhEntry(in b: [UInt8], _ range: Range<Int>) -> UInt64? {
        var p = range.lowerBound
        while p + 12 <= range.upperBound {
            let namesz = Int(u32(b, p)), descsz = Int(u32(b, p + 4)), type = u32(b, p + 8)
            let nameAt = p + 12
            let descAt = nameAt + (namesz + 3) & ~3
            let next = descAt + (descsz + 3) & ~3
            guard namesz < 1 << 16, descsz < 1 << 16, next <= range.upperBound else { return nil }
            if type == pvhNoteType, namesz >= 3, Array(b[nameAt..<(nameAt + 3)]) == Array("Xen".utf8) {
                return descsz >= 8 ? u64(b, descAt) : UInt64(u32(b, descAt))
            }
            p = next
        }
        return nil
    }

    /// The highest guest-physical byte the kernel occupies.
    public var end: UInt64 { segments.map { $0.physicalAddress + $0.memorySize }.max() ?? 0 }

    static func u16(_ b: [UInt8], _ o: Int) -> UInt16 { LittleEndian.load(UInt16.self, from: b, at: o) }
    static func u32(_ b: [UInt8], _ o: Int) -> UInt32 { LittleEndian.load(UInt32.self, from: b, at: o) }
    static func u64(_ b: [UInt8], _ o: Int) -> UInt64 { LittleEndian.load(UInt64.self, from: b, at: o) }
}
