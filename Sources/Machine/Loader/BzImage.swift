import VMCore
/// A Linux bzImage, validated against the x86 boot protocol
/// (Documentation/arch/x86/boot.rst, "The real-mode kernel header").
public struct BzImage: Sendable {
    public let path: String
    /// The setup header bytes, 0x1F1 up to its end, copied into the zero page.
    public let setupHeader: [UInt8]
    /// Where the protected-mode kernel (everything after the setup sectors) lies in the file.
    public let protectedModeKernel: Range<Int>
    public let protocolVersion: UInt16
    public let loadFlags: UInt8
    public let initrdAddressMax: UInt32
    public let commandLineSize: UInt32
    public let relocatable: Bool
    public let preferredAddress: UInt64
    /// Memory the kernel needs from its load address while it decompresses.
    public let initSize: UInt32
    public let payloadOffset: UInt32
    public let payloadLength: UInt32

    static let headerMagic: [UInt8] = Array("HdrS".utf8)

    /// Validates the header: only the first page of the file is read.
    public init(_ source: ImageSource) throws(LoaderError) {
        let path = source.path
        self.path = path
        let image = source.read(0..<0x1000)
        guard image.count >= 0x250, Array(image[0x202..<0x206]) == Self.headerMagic else {
            throw .notAKernel(path: path)
        }
        func u8(_ o: Int) -> UInt8 { image[o] }
        func u16(_ o: Int) -> UInt16 { LittleEndian.load(UInt16.self, from: image, at: o) }
        func u32(_ o: Int) -> UInt32 { LittleEndian.load(UInt32.self, from: image, at: o) }
        func u64(_ o: Int) -> UInt64 { LittleEndian.load(UInt64.self, from: image, at: o) }

        protocolVersion = u16(0x206)
        guard protocolVersion >= 0x206 else { throw .protocolTooOld(path: path, version: protocolVersion) }
        let setupSectors = Int(u8(0x1F1) == 0 ? 4 : u8(0x1F1))
        let kernelStart = (setupSectors + 1) * 512
        let kernelSize = Int(u32(0x1F4)) * 16
        guard kernelStart + kernelSize <= source.count, kernelStart < source.count else {
            throw .truncated(path: path, needed: kernelStart + kernelSize, actual: source.count)
        }
        // XLF_KERNEL_64 (xloadflags bit 0, protocol 2.12+): a 64-bit entry at +0x200.
        guard protocolVersion >= 0x20C, u16(0x236) & 1 != 0 else { throw .no64BitEntry(path: path) }
        let headerEnd = min(0x202 + Int(u8(0x201)), 0x290)
        setupHeader = Array(image[0x1F1..<headerEnd])
        protectedModeKernel = kernelStart..<(kernelStart + kernelSize)
        loadFlags = u8(0x211)
        initrdAddressMax = u32(0x22C)
        commandLineSize = protocolVersion >= 0x206 ? u32(0x238) : 255
        relocatable = u8(0x234) != 0
        preferredAddress = protocolVersion >= 0x20A ? u64(0x258) : Layout.kernelLoad
        initSize = protocolVersion >= 0x20A ? u32(0x260) : 0
        payloadOffset = u32(0x248)
        payloadLength = u32(0x24C)
    }

    /// Where svmm loads the protected-mode kernel: 1 MiB when relocatable
    /// (the kernel moves itself to an aligned address), else where it must run.
    public var loadAddress: UInt64 { relocatable ? Layout.kernelLoad : preferredAddress }

    /// The 64-bit entry point (boot protocol: load address + 0x200).
    public var entry64: UInt64 { loadAddress + 0x200 }

    /// Where the compressed kernel (protocol 2.08+) lies in the file, if the
    /// header locates one inside the protected-mode part.
    public var payload: Range<Int>? {
        guard protocolVersion >= 0x208, payloadLength > 0 else { return nil }
        let start = protectedModeKernel.lowerBound + Int(payloadOffset)
        let end = start + Int(payloadLength)
        guard end <= protectedModeKernel.upperBound else { return nil }
        return start..<end
    }

    /// Bytes of RAM the kernel occupies from its load address while booting.
    public var footprint: UInt64 { max(UInt64(initSize), UInt64(protectedModeKernel.count)) }
}
