import VMCore
/// Where svmm puts things in guest-physical memory (x86 PC conventions).
public enum Layout {
    public static let pageSize: UInt64 = 4096
    /// Real-mode memory ends here; the EBDA/VGA/BIOS area follows.
    public static let lowMemoryEnd: UInt64 = 0x9_FC00
    /// The boot GDT (LongModeSetup.gdt).
    public static let gdt: UInt64 = 0x500
    /// Boot parameters ("zero page") for the Linux boot protocol.
    public static let zeroPage: UInt64 = 0x7000
    /// PVH start info and its memory map.
    public static let pvhStartInfo: UInt64 = 0x6000
    /// The Multiboot information, its module list and memory map (in place of PVH's).
    public static let multibootInfo: UInt64 = 0x6000
    /// Identity-mapping page tables for the first 4 GiB: a PML4, a PDPT and
    /// four page directories of 2 MiB pages (0xB000–0xEFFF).
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xA000
    public static let pageDirectories: UInt64 = 0xB000
    public static let commandLine: UInt64 = 0x2_0000
    public static let commandLineMax: UInt64 = 0x1_0000
    /// A firmware program's stack top (it grows down from here).
    public static let firmwareStack: UInt64 = 0x8_0000
    /// The boot stack (grows down from here).
    public static let bootStack: UInt64 = 0x8_FF00
    /// ACPI tables live in the BIOS area, where a legacy RSDP scan also looks.
    public static let acpiStart: UInt64 = 0xE_0000
    public static let acpiEnd: UInt64 = 0x10_0000
    /// Where an x86 CPU starts after reset (F000:FFF0).
    public static let resetVector: UInt64 = 0xF_FFF0
    /// The protected-mode kernel is loaded at 1 MiB; so is a firmware program.
    public static let kernelLoad: UInt64 = 0x10_0000
    public static let firmwareLoad: UInt64 = 0x10_0000
    /// The 32-bit PCI hole: [3 GiB, 4 GiB) holds no RAM.
    public static let pciHoleStart: UInt64 = 0xC000_0000
    public static let highMemoryStart: UInt64 = 0x1_0000_0000
    /// Where svmm places PCI memory BARs (inside the root bridge's window, clear of the boot marker).
    public static let pciBARStart: UInt64 = 0xE000_0000
    /// pci-testdev's memory BAR (--test-devices), below the virtio BARs; its I/O BAR.
    public static let testDeviceBAR: UInt64 = 0xDF00_0000
    public static let testDevicePorts: UInt16 = 0xC000
    /// The boot-time marker's MMIO byte (BootMarker).
    public static let bootMarker: UInt64 = 0xD000_0000
    /// The three pages KVM_SET_TSS_ADDR asks for (Intel's real-mode TSS), just below the BIOS area at 4 GiB - 256 KiB, as QEMU places them.
    public static let kvmTSS: UInt64 = 0xFFFB_D000
    /// The last address of the root bridge's memory window (the DSDT's
    /// PNP0A03 forwards [pciHoleStart, pciWindowEnd]), just below the I/O APIC.
    public static let pciWindowEnd: UInt64 = 0xFEBF_FFFF
    public static let ioAPIC: UInt64 = 0xFEC0_0000
    public static let localAPIC: UInt64 = 0xFEE0_0000

    /// RAM regions for `size` bytes: below the PCI hole, the rest above 4 GiB.
    public static func ramRegions(size: UInt64) -> [(guestAddress: UInt64, size: UInt64)] {
        if size <= pciHoleStart { return [(0, size)] }
        return [(0, pciHoleStart), (highMemoryStart, size - pciHoleStart)]
    }
}
