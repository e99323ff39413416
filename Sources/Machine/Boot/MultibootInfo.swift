import VMCore
/// The Multiboot (version 1) information structure a kernel finds at EBX
/// (the Multiboot Specification 0.6.96, §3.3), with its module list and
/// memory map, as one blob placed at `Layout.multibootInfo`; the strings it
/// points to are placed by the loader.
public struct MultibootInfo: Sendable {
    static let memoryFields: UInt32 = 1 << 0, commandLineField: UInt32 = 1 << 2, modulesField: UInt32 = 1 << 3
    static let memoryMapField: UInt32 = 1 << 6, loaderNameField: UInt32 = 1 << 9
    static let modulesOffset: UInt64 = 0x60
    static let memoryMapOffset: UInt64 = 0x80

    public struct Module: Sendable {
        public var start: UInt64, end: UInt64, string: UInt64
    }

    public var commandLine: UInt64
    public var loaderName: UInt64
    public var module: Module?
    public var memoryMap: [E820Entry]

    /// KiB of RAM below 640 KiB, and from 1 MiB up to the first hole.
    public var lowerKiB: UInt32 {
        UInt32(memoryMap.first { $0.kind == .ram && $0.address == 0 }.map { $0.size >> 10 } ?? 0)
    }
    public var upperKiB: UInt32 {
        UInt32(clamping: memoryMap.first { $0.kind == .ram && $0.address == Layout.kernelLoad }.map { $0.size >> 10 } ?? 0)
    }

    public func bytes(at base: UInt64) -> [UInt8] {
        var flags = Self.memoryFields | Self.commandLineField | Self.memoryMapField | Self.loaderNameField
        if module != nil { flags |= Self.modulesField }
        let mapLength = UInt64(memoryMap.count * 24)
        var b = le(UInt64(flags), 4) + le(UInt64(lowerKiB), 4) + le(UInt64(upperKiB), 4)
        b += le(0, 4)                                                              // boot_device: not given
        b += le(commandLine, 4)
        b += le(module == nil ? 0 : 1, 4) + le(module == nil ? 0 : base + Self.modulesOffset, 4)
        b += [UInt8](repeating: 0, count: 16)                                      // symbols: not given
        b += le(mapLength, 4) + le(base + Self.memoryMapOffset, 4)
        b += le(0, 4) + le(0, 4) + le(0, 4)                                        // drives, config table
        b += le(loaderName, 4) + le(0, 4)                                          // loader name, APM
        b += [UInt8](repeating: 0, count: Int(Self.modulesOffset) - b.count)
        if let m = module {
            b += le(m.start, 4) + le(m.end, 4) + le(m.string, 4) + le(0, 4)
        }
        b += [UInt8](repeating: 0, count: Int(Self.memoryMapOffset) - b.count)
        for e in memoryMap {
            // size (of the rest of the entry), base_addr, length, type.
            b += le(20, 4) + le(e.address, 8) + le(e.size, 8) + le(UInt64(e.kind.rawValue), 4)
        }
        return b
    }
}
