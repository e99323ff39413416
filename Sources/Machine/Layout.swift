/// Where svmm puts things in guest-physical memory (x86 PC conventions).
public enum Layout {
    public static let pageSize: UInt64 = 4096
    /// Real-mode memory ends here; the EBDA/VGA/BIOS area follows.
    public static let lowMemoryEnd: UInt64 = 0x9_FC00
    /// Boot parameters ("zero page") for the Linux boot protocol.
    public static let zeroPage: UInt64 = 0x7000
    /// PVH start info and its memory map.
    public static let pvhStartInfo: UInt64 = 0x6000
    public static let commandLine: UInt64 = 0x2_0000
    public static let commandLineMax: UInt64 = 0x1_0000
    /// The boot stack (grows down from here).
    public static let bootStack: UInt64 = 0x8_FF00
    /// ACPI tables live in the BIOS area, where a legacy RSDP scan also looks.
    public static let acpiStart: UInt64 = 0xE_0000
    public static let acpiEnd: UInt64 = 0x10_0000
    /// Where an x86 CPU starts after reset (F000:FFF0).
    public static let resetVector: UInt64 = 0xF_FFF0
    /// The protected-mode kernel is loaded at 1 MiB.
    public static let kernelLoad: UInt64 = 0x10_0000
    /// The 32-bit PCI hole: [3 GiB, 4 GiB) holds no RAM.
    public static let pciHoleStart: UInt64 = 0xC000_0000
    public static let highMemoryStart: UInt64 = 0x1_0000_0000
    /// Where svmm places PCI memory BARs (inside the root bridge's window, clear of the boot marker).
    public static let pciBARStart: UInt64 = 0xE000_0000
    public static let ioAPIC: UInt64 = 0xFEC0_0000
    public static let localAPIC: UInt64 = 0xFEE0_0000

    /// RAM regions for `size` bytes: below the PCI hole, the rest above 4 GiB.
    public static func ramRegions(size: UInt64) -> [(guestAddress: UInt64, size: UInt64)] {
        if size <= pciHoleStart { return [(0, size)] }
        return [(0, pciHoleStart), (highMemoryStart, size - pciHoleStart)]
    }
}
