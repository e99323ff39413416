import VMCore
/// The ACPI tables svmm gives a guest (ACPI 6.4 §5.2): RSDP → XSDT → FADT
/// (→ DSDT) and MADT. Distro kernels have no MP-table parser, so these are
/// how the guest learns its CPUs and I/O APIC, and how it powers off.
///
/// The platform is "hardware-reduced" (FADT flag HW_REDUCED_ACPI, §4.1):
/// no PM1 blocks, no SCI; sleep (S5 = poweroff) goes through the FADT's
/// sleep control register, reset through its reset register. Both are I/O
/// ports handled by `PowerControl`.
///
/// With `pmTimer` (Multiboot boots: kvm-unit-tests reads the timer the FADT
/// names and finds tables through the RSDP's 32-bit RSDT) the FADT is not
/// hardware-reduced (ACPI ignores PM_TMR_BLK on such a platform) and names
/// the ACPI PM timer (`PMTimer`), and an RSDT lists the tables too.
/// With `keyboard` the FADT says an 8042 is there (IAPC_BOOT_ARCH bit 1),
/// so Linux probes the keyboard controller (`I8042`); without it Linux
/// leaves ports 0x60/0x64 alone.
public struct ACPITables: Sendable {
    public var cpus: Int
    public var pmTimer: Bool
    public var keyboard: Bool

    public static let sleepControlPort: UInt16 = 0x600
    public static let sleepStatusPort: UInt16 = 0x601
    public static let resetPort: UInt16 = 0x602
    public static let resetValue: UInt8 = 0x01
    /// SLP_TYP the DSDT's \_S5 object gives for soft-off.
    public static let s5SleepType: UInt8 = 5

    public init(cpus: Int, pmTimer: Bool = false, keyboard: Bool = false) {
        self.cpus = cpus
        self.pmTimer = pmTimer
        self.keyboard = keyboard
    }

    /// The I/O APIC's id follows the vCPUs' local APIC ids.
    public var ioAPICId: UInt8 { UInt8(cpus) }

    /// All tables laid out from `base`; the RSDP comes first.
    public func build(at base: UInt64) -> (bytes: [UInt8], rsdp: UInt64) {
        var blob = [UInt8]()
        func place(_ table: [UInt8]) -> UInt64 {
            while blob.count % 16 != 0 { blob.append(0) }
            let at = base + UInt64(blob.count)
            blob += table
            return at
        }
        let rsdpSize = 36
        blob = [UInt8](repeating: 0, count: rsdpSize)   // filled in last
        let dsdt = place(dsdtTable())
        let fadt = place(fadtTable(dsdt: dsdt))
        let madt = place(madtTable())
        let xsdt = place(Self.table("XSDT", revision: 1, body: [fadt, madt].flatMap { le($0, 8) }))
        let rsdt = pmTimer ? place(Self.table("RSDT", revision: 1, body: [fadt, madt].flatMap { le($0, 4) })) : 0
        blob.replaceSubrange(0..<rsdpSize, with: Self.rsdp(xsdt: xsdt, rsdt: rsdt))
        return (blob, base)
    }

    /// RSDP (§5.2.5.3), revision 2: both checksums; an RSDT only with `pmTimer`.
    static func rsdp(xsdt: UInt64, rsdt: UInt64 = 0) -> [UInt8] {
        var b = Array("RSD PTR ".utf8) + [0] + Array("SVMM  ".utf8) + [2] + le(rsdt, 4) + le(36, 4) + le(xsdt, 8) + [0, 0, 0, 0]
        b[8] = checksum(b[0..<20])
        b[32] = checksum(b[0..<36])
        return b
    }

    /// A system description table: 36-byte header (§5.2.6) + body, checksummed.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var t = Array(signature.utf8) + le(UInt64(36 + body.count), 4) + [revision, 0]
        t += Array("SVMM  ".utf8) + Array("SVMMACPI".utf8) + le(1, 4) + Array("SVMM".utf8) + le(1, 4)
        t += body
        t[9] = checksum(t[...])
        return t
    }

    /// FADT (§5.2.9), revision 6, 276 bytes: hardware-reduced, or with the PM timer.
    func fadtTable(dsdt: UInt64) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 276 - 36)
        func put(_ bytes: [UInt8], at offset: Int) { b.replaceSubrange((offset - 36)..<(offset - 36 + bytes.count), with: bytes) }
        put(le(UInt64(UInt32(truncatingIfNeeded: dsdt)), 4), at: 40)
        put(le(keyboard ? 0x0006 : 0x0004, 2), at: 109)    // IAPC_BOOT_ARCH: VGA not present; 8042 with `keyboard`
        let hwReduced: UInt64 = 1 << 20, resetSupported: UInt64 = 1 << 10
        let powerButtonAbsent: UInt64 = 1 << 4, sleepButtonAbsent: UInt64 = 1 << 5
        put(le((pmTimer ? 0 : hwReduced) | resetSupported | powerButtonAbsent | sleepButtonAbsent, 4), at: 112)
        if pmTimer {
            put(le(UInt64(PMTimer.port), 4), at: 76)         // PM_TMR_BLK
            put([4], at: 91)                                // PM_TMR_LEN; TMR_VAL_EXT clear: 24 bits
            put([1, 32, 0, 3] + le(UInt64(PMTimer.port), 8), at: 208)   // X_PM_TMR_BLK: I/O, 32 bits, dword access
        }
        put(Self.ioPort(Self.resetPort), at: 116)           // RESET_REG
        put([Self.resetValue], at: 128)
        put([0], at: 131)                                   // FADT minor version
        put(le(dsdt, 8), at: 140)                           // X_DSDT
        put(Self.ioPort(Self.sleepControlPort), at: 244)    // SLEEP_CONTROL_REG
        put(Self.ioPort(Self.sleepStatusPort), at: 256)     // SLEEP_STATUS_REG
        put(Array("SVMMSVMM".utf8), at: 268)                // hypervisor vendor identity
        return Self.table("FACP", revision: 6, body: b)
    }

    /// A Generic Address Structure (§5.2.3.2) for one byte in I/O space.
    static func ioPort(_ port: UInt16) -> [UInt8] {
        [1, 8, 0, 1] + le(UInt64(port), 8)
    }

    /// MADT (§5.2.12): one enabled local APIC per vCPU and the I/O APIC.
    func madtTable() -> [UInt8] {
        var b = le(Layout.localAPIC, 4) + le(1, 4)          // PCAT_COMPAT: 8259s present (masked by the guest)
        for cpu in 0..<cpus {
            b += [0, 8, UInt8(cpu), UInt8(cpu)] + le(1, 4)  // Processor Local APIC: UID, APIC id, enabled
        }
        b += [1, 12, ioAPICId, 0] + le(Layout.ioAPIC, 4) + le(0, 4)   // I/O APIC at GSI 0
        return Self.table("APIC", revision: 5, body: b)
    }

    /// DSDT (§5.2.11.1): the AML the guest interprets.
    ///
    /// COM1 must be here: on a hardware-reduced platform Linux has no legacy
    /// PIC and allocates ISA IRQs only for devices ACPI describes, so the
    /// 8250 driver's hard-coded port would get no IRQ 4.
    func dsdtTable() -> [UInt8] {
        let com1 = AML.device("COM1",
            AML.name("_HID", AML.eisaID("PNP0501")) +
            AML.name("_UID", AML.integer(1)) +
            AML.name("_CRS", AML.resourceTemplate([
                AML.ioPorts(Serial16550.com1Base, count: 8),
                AML.irq(Int(Serial16550.com1IRQ)),
            ])))
        // pvpanic (QEMU0001): the guest reports a panic on port 0x505.
        let pvpanic = AML.device("PEVT",
            AML.name("_HID", AML.string("QEMU0001")) +
            AML.name("_CRS", AML.resourceTemplate([AML.ioPorts(PanicDevice.port, count: 1)])))
        // The PCI root bridge (PNP0A03, PCI Firmware spec 3.2 §4.1): bus 0,
        // configuration through ports 0xCF8/0xCFC, and the windows it forwards:
        // all I/O ports but the config ones, and the 32-bit MMIO hole.
        let pci = AML.device("PCI0",
            AML.name("_HID", AML.eisaID("PNP0A03")) +
            AML.name("_ADR", AML.integer(0)) +
            AML.name("_SEG", AML.integer(0)) +
            AML.name("_UID", AML.integer(0)) +
            AML.name("_BBN", AML.integer(0)) +
            AML.name("_CRS", AML.resourceTemplate([
                AML.busNumbers(0, 0xFF),
                AML.ioPorts(PCIHostBridge.addressPort, count: 8),
                AML.dwordWindow(io: true, 0x0000, 0x0CF7),
                AML.dwordWindow(io: true, 0x0D00, 0xFFFF),
                AML.dwordWindow(io: false, UInt32(Layout.pciHoleStart), UInt32(Layout.pciWindowEnd)),
            ])))
        // The PS/2 keyboard controller (PNP0303) with `keyboard`: Linux's i8042
        // driver takes its ports and IRQ 1 from here (and, with no PS/2 mouse
        // described, does not probe for one).
        let ps2k = keyboard ? AML.device("PS2K",
            AML.name("_HID", AML.eisaID("PNP0303")) +
            AML.name("_CRS", AML.resourceTemplate([
                AML.ioPorts(I8042.dataPort, count: 1),
                AML.ioPorts(I8042.commandPort, count: 1),
                AML.irq(Int(I8042.irq)),
            ]))) : []
        // Name (_S5, Package (4) { 5, 0, 0, 0 }): the soft-off sleep type (§7.4.2).
        let s5 = AML.name("_S5", AML.package([AML.integer(UInt64(Self.s5SleepType)), AML.integer(0), AML.integer(0), AML.integer(0)]))
        return Self.table("DSDT", revision: 2, body: AML.scope("\\_SB", pci + com1 + pvpanic + ps2k) + s5)
    }

    static func checksum<C: Collection>(_ bytes: C) -> UInt8 where C.Element == UInt8 {
        0 &- bytes.reduce(0, &+)
    }
}

/// Little-endian bytes of `value`, `count` bytes wide.
func le(_ value: UInt64, _ count: Int) -> [UInt8] { LittleEndian.bytes(value, count: count) }
