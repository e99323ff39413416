@testable import Machine

/// Tiny bzImages built byte by byte: a real setup header (boot protocol
/// 2.15) in front of a few bytes of 64-bit code at the 64-bit entry. Good
/// for loader tests and for KVM tests that need no real kernel.
enum SyntheticKernel {
    /// - Parameters:
    ///   - code: bytes placed at the 64-bit entry (load address + 0x200).
    ///   - version: boot protocol version in the header.
    ///   - xloadflags: bit 0 = 64-bit entry present.
    static func bzImage(code: [UInt8] = [0xF4], version: UInt16 = 0x020F, xloadflags: UInt16 = 1,
                        commandLineSize: UInt32 = 2047, initrdAddressMax: UInt32 = 0x7FFF_FFFF,
                        initSize: UInt32 = 0x10_0000, payload: [UInt8]? = nil) -> [UInt8] {
        let setupSectors = 1
        var kernel = [UInt8](repeating: 0x90, count: 0x200) + code
        let payloadOffset = kernel.count
        if let payload { kernel += payload }
        while kernel.count % 16 != 0 { kernel.append(0) }
        var image = [UInt8](repeating: 0, count: (setupSectors + 1) * 512)
        func put(_ v: UInt64, _ n: Int, at o: Int) { for i in 0..<n { image[o + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
        image[0x1F1] = UInt8(setupSectors)
        put(UInt64(kernel.count / 16), 4, at: 0x1F4)          // syssize
        put(0xAA55, 2, at: 0x1FE)
        image[0x200] = 0xEB; image[0x201] = 0x66               // jump over the header: header ends at 0x268
        image.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
        put(UInt64(version), 2, at: 0x206)
        image[0x211] = 0x01                                    // LOADED_HIGH
        put(0x10_0000, 4, at: 0x214)                           // code32_start
        put(UInt64(initrdAddressMax), 4, at: 0x22C)
        put(0x20_0000, 4, at: 0x230)                           // kernel_alignment
        image[0x234] = 1                                       // relocatable
        put(UInt64(xloadflags), 2, at: 0x236)
        put(UInt64(commandLineSize), 4, at: 0x238)
        put(0x100_0000, 8, at: 0x258)                          // pref_address
        put(UInt64(initSize), 4, at: 0x260)
        if let payload {
            put(UInt64(payloadOffset), 4, at: 0x248)
            put(UInt64(payload.count), 4, at: 0x24C)
        }
        return image + kernel
    }

    /// 64-bit code: write `value` to port `port` (byte), then halt forever.
    static func out(_ port: UInt16, _ value: UInt8) -> [UInt8] {
        [0xB0, value, 0x66, 0xBA] + le(UInt64(port), 2) + [0xEE, 0xF4, 0xEB, 0xFD]
    }

    /// A minimal ELF64 vmlinux: one PT_LOAD of `code` at 16 MiB and, unless
    /// `pvhNote` is false, a PT_NOTE with the PVH entry pointing at it.
    static func vmlinux(code: [UInt8] = [0xF4], pvhNote: Bool = true) -> [UInt8] {
        let loadAddress: UInt64 = 0x100_0000
        let phoff = 64, phnum = pvhNote ? 2 : 1
        let noteOffset = phoff + 56 * phnum
        let note = le(4, 4) + le(4, 4) + le(18, 4) + Array("Xen\0".utf8) + le(loadAddress, 4)
        let codeOffset = noteOffset + (pvhNote ? note.count : 0)
        var h = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        h += le(2, 2) + le(0x3E, 2) + le(1, 4) + le(loadAddress, 8) + le(UInt64(phoff), 8) + le(0, 8)
        h += le(0, 4) + le(64, 2) + le(56, 2) + le(UInt64(phnum), 2) + le(64, 2) + le(0, 2) + le(0, 2)
        var ph = le(1, 4) + le(7, 4) + le(UInt64(codeOffset), 8) + le(loadAddress | 0xFFFF_FFFF_8000_0000, 8)
        ph += le(loadAddress, 8) + le(UInt64(code.count), 8) + le(UInt64(code.count), 8) + le(0x1000, 8)
        if pvhNote {
            ph += le(4, 4) + le(4, 4) + le(UInt64(noteOffset), 8) + le(0, 8) + le(0, 8)
            ph += le(UInt64(note.count), 8) + le(UInt64(note.count), 8) + le(4, 8)
        }
        return h + ph + (pvhNote ? note : []) + code
    }

    /// An ELF64 vmlinux laid out as Linux's: PT_LOAD segments at the given
    /// file offsets (2 MiB and up) and addresses, the gaps between them
    /// filled with 0xCC, and a PVH note pointing at `entry`.
    static func vmlinux(segments: [(offset: Int, address: UInt64, bytes: [UInt8], memorySize: Int)], entry: UInt64) -> [UInt8] {
        let phoff = 64, phnum = segments.count + 1
        let noteOffset = phoff + 56 * phnum
        let note = le(4, 4) + le(4, 4) + le(18, 4) + Array("Xen\0".utf8) + le(entry, 4)
        var h = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        h += le(2, 2) + le(0x3E, 2) + le(1, 4) + le(entry, 8) + le(UInt64(phoff), 8) + le(0, 8)
        h += le(0, 4) + le(64, 2) + le(56, 2) + le(UInt64(phnum), 2) + le(64, 2) + le(0, 2) + le(0, 2)
        var ph: [UInt8] = []
        for s in segments {
            ph += le(1, 4) + le(7, 4) + le(UInt64(s.offset), 8) + le(s.address | 0xFFFF_FFFF_8000_0000, 8)
            ph += le(s.address, 8) + le(UInt64(s.bytes.count), 8) + le(UInt64(s.memorySize), 8) + le(0x20_0000, 8)
        }
        ph += le(4, 4) + le(4, 4) + le(UInt64(noteOffset), 8) + le(0, 8) + le(0, 8)
        ph += le(UInt64(note.count), 8) + le(UInt64(note.count), 8) + le(4, 8)
        var file = h + ph + note
        for s in segments.sorted(by: { $0.offset < $1.offset }) {
            file += [UInt8](repeating: 0xCC, count: s.offset - file.count) + s.bytes
        }
        return file + [UInt8](repeating: 0xCC, count: 0x1800)
    }
}
