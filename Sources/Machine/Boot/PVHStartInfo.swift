import VMCore
/// `struct hvm_start_info` (version 1) with its module list and memory map
/// (xen/include/public/arch-x86/hvm/start_info.h), as one blob placed at
/// `Layout.pvhStartInfo`.
public struct PVHStartInfo: Sendable {
    public static let magic: UInt32 = 0x336E_C578
    static let modlistOffset: UInt64 = 0x40
    static let memmapOffset: UInt64 = 0x80

    public var commandLine: UInt64
    public var rsdp: UInt64
    public var initrd: (address: UInt64, size: UInt64)?
    public var memoryMap: [E820Entry]

    public func bytes(at base: UInt64) -> [UInt8] {
        var b = le(UInt64(Self.magic), 4) + le(1, 4) + le(0, 4)
        b += le(initrd == nil ? 0 : 1, 4)                                   // nr_modules
        b += le(initrd == nil ? 0 : base + Self.modlistOffset, 8)           // modlist_paddr
        b += le(commandLine, 8) + le(rsdp, 8)
        b += le(base + Self.memmapOffset, 8) + le(UInt64(memoryMap.count), 4) + le(0, 4)
        b += [UInt8](repeating: 0, count: Int(Self.modlistOffset) - b.count)
        if let initrd {
            b += le(initrd.address, 8) + le(initrd.size, 8) + le(0, 8) + le(0, 8)
        }
        b += [UInt8](repeating: 0, count: Int(Self.memmapOffset) - b.count)
        for e in memoryMap {
            b += le(e.address, 8) + le(e.size, 8) + le(UInt64(e.kind.rawValue), 4) + le(0, 4)
        }
        return b
    }
}
