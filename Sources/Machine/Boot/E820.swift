import VMCore
/// The BIOS memory map (ACPI "System Address Map", e820) svmm reports.
public struct E820Entry: Sendable, Equatable {
    public enum Kind: UInt32, Sendable { case ram = 1, reserved = 2 }
    public var address: UInt64
    public var size: UInt64
    public var kind: Kind

    /// RAM below 640 KiB, the BIOS area (ACPI tables) reserved, RAM from 1 MiB
    /// to the PCI hole and above 4 GiB.
    public static func map(for memory: GuestMemory) -> [E820Entry] {
        var entries = [E820Entry(address: 0, size: Layout.lowMemoryEnd, kind: .ram),
                       E820Entry(address: Layout.acpiStart, size: Layout.acpiEnd - Layout.acpiStart, kind: .reserved)]
        for r in memory.regions {
            let start = max(r.guestAddress, Layout.kernelLoad)
            if r.end > start { entries.append(E820Entry(address: start, size: r.end - start, kind: .ram)) }
        }
        return entries
    }
}
