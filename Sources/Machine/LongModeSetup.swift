import KVM
import VMCore

/// The 64-bit entry state svmm gives a guest it enters in long mode: a flat
/// GDT, identity-mapped page tables and the control registers that enable
/// paging (Intel SDM Vol. 3A §9.8.5, "Initializing IA-32e Mode"; the Linux
/// boot protocol's 64-bit entry asks for the same).
public struct LongModeSetup: Sendable {
    /// Where the tables live in guest-physical memory (all below 1 MiB).
    public static let gdtAddress = Layout.gdt
    public static let pml4Address = Layout.pml4
    public static let pdptAddress = Layout.pdpt
    public static let pdAddress = Layout.pageDirectories

    /// Identity-mapped span: 4 GiB in 2 MiB pages.
    public static let identityMappedBytes: UInt64 = 4 << 30

    public static let code32Selector: UInt16 = 0x08
    public static let codeSelector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18

    /// GDT entries: null, 32-bit code (PVH entry), 64-bit code, data (Linux's
    /// boot GDT uses the same selectors: __BOOT_CS = 0x10, __BOOT_DS = 0x18).
    public static let gdt: [UInt64] = [
        0,
        0x00CF_9B00_0000_FFFF,  // code: present, DPL0, exec/read, accessed, D/B=1, G=1
        0x00AF_9B00_0000_FFFF,  // code: present, DPL0, exec/read, accessed, L=1, G=1
        0x00CF_9300_0000_FFFF,  // data: present, DPL0, read/write, accessed, D/B=1, G=1
    ]

    /// Writes the GDT and page tables into guest memory.
    public static func writeTables(into memory: GuestMemory) throws(GuestMemoryError) {
        for (i, entry) in gdt.enumerated() {
            try memory.store(entry, at: gdtAddress + UInt64(i * 8))
        }
        // PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 2 MiB pages.
        let present: UInt64 = 0x1, writable: UInt64 = 0x2, large: UInt64 = 0x80
        try memory.fill(0, at: pml4Address, count: 0x7000)
        try memory.store(pdptAddress | present | writable, at: pml4Address)
        for d in 0..<UInt64(4) {
            let pd = pdAddress + d * 0x1000
            try memory.store(pd | present | writable, at: pdptAddress + d * 8)
            for e in 0..<UInt64(512) {
                let physical = (d * 512 + e) << 21
                try memory.store(physical | present | writable | large, at: pd + e * 8)
            }
        }
    }

    /// Loads the flat segments from `gdt`: `codeEntry` into CS, the data
    /// entry into the others, the GDT itself, and a busy TSS-shaped TR
    /// (type 11), which VM entry requires even though nothing uses it.
    static func loadFlatSegments(into sregs: inout SpecialRegisters, codeSelector: UInt16, codeEntry: Int) {
        sregs.cs = Segment(selector: codeSelector, descriptor: gdt[codeEntry])
        let data = Segment(selector: dataSelector, descriptor: gdt[3])
        sregs.ds = data
        sregs.es = data
        sregs.fs = data
        sregs.gs = data
        sregs.ss = data
        sregs.gdtBase = gdtAddress
        sregs.gdtLimit = UInt16(gdt.count * 8 - 1)
        sregs.tr = Segment(limit: 0x67, type: 11, present: 1)
    }

    /// Puts `sregs` in 32-bit protected mode, paging off: the PVH entry state
    /// (flat 4 GiB code and data segments).
    public static func applyProtectedMode(to sregs: inout SpecialRegisters) {
        loadFlatSegments(into: &sregs, codeSelector: code32Selector, codeEntry: 1)
        sregs.cr0 = 0x11                       // ET | PE
        sregs.cr3 = 0
        sregs.cr4 = 0
        sregs.efer = 0
    }

    /// Puts `sregs` in 64-bit mode with paging on and the tables above loaded.
    public static func apply(to sregs: inout SpecialRegisters) {
        loadFlatSegments(into: &sregs, codeSelector: codeSelector, codeEntry: 2)
        sregs.cr3 = pml4Address
        sregs.cr4 = 0x20                       // PAE
        sregs.cr0 = 0x8000_0033                // PG | NE | ET | MP | PE
        sregs.efer = 0x500                     // LMA | LME
    }
}
