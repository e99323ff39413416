import VMCore
/// The Linux x86 "zero page" (struct boot_params, Documentation/arch/x86/zero-page.rst).
public struct BootParams: Sendable {
    public private(set) var bytes = [UInt8](repeating: 0, count: 4096)

    // Offsets from zero-page.rst and the boot protocol's setup header.
    static let extRamdiskImage = 0x0C0, extRamdiskSize = 0x0C4, extCmdLinePtr = 0x0C8
    static let acpiRsdpAddr = 0x070
    static let e820Entries = 0x1E8, e820Table = 0x2D0, e820Max = 128
    static let setupHeader = 0x1F1
    static let vidMode = 0x1FA, typeOfLoader = 0x210, loadFlags = 0x211
    static let ramdiskImage = 0x218, ramdiskSize = 0x21C, heapEndPtr = 0x224, cmdLinePtr = 0x228

    public init(kernel: BzImage) {
        bytes.replaceSubrange(Self.setupHeader..<(Self.setupHeader + kernel.setupHeader.count), with: kernel.setupHeader)
        put16(0xFFFF, at: Self.vidMode)                 // "normal" video mode
        bytes[Self.typeOfLoader] = 0xFF                  // undefined boot loader
        // LOADED_HIGH: kernel at 1 MiB; CAN_USE_HEAP with heap_end_ptr.
        bytes[Self.loadFlags] = kernel.loadFlags | 0x01 | 0x80
        put16(0xFE00, at: Self.heapEndPtr)
    }

    mutating func put16(_ v: UInt16, at o: Int) { bytes.putLittleEndian(UInt64(v), count: 2, at: o) }
    mutating func put32(_ v: UInt32, at o: Int) { bytes.putLittleEndian(UInt64(v), count: 4, at: o) }
    mutating func put64(_ v: UInt64, at o: Int) { bytes.putLittleEndian(v, count: 8, at: o) }

    public mutating func setCommandLine(address: UInt64) {
        put32(UInt32(truncatingIfNeeded: address), at: Self.cmdLinePtr)
        put32(UInt32(truncatingIfNeeded: address >> 32), at: Self.extCmdLinePtr)
    }

    public mutating func setInitrd(address: UInt64, size: UInt64) {
        put32(UInt32(truncatingIfNeeded: address), at: Self.ramdiskImage)
        put32(UInt32(truncatingIfNeeded: size), at: Self.ramdiskSize)
        put32(UInt32(truncatingIfNeeded: address >> 32), at: Self.extRamdiskImage)
        put32(UInt32(truncatingIfNeeded: size >> 32), at: Self.extRamdiskSize)
    }

    public mutating func setACPIRoot(_ address: UInt64) { put64(address, at: Self.acpiRsdpAddr) }

    public mutating func setMemoryMap(_ entries: [E820Entry]) {
        let n = min(entries.count, Self.e820Max)
        bytes[Self.e820Entries] = UInt8(n)
        for (i, e) in entries.prefix(n).enumerated() {
            let o = Self.e820Table + i * 20
            put64(e.address, at: o)
            put64(e.size, at: o + 8)
            put32(e.kind.rawValue, at: o + 16)
        }
    }
}
