import Foundation
import Testing
@testable import Machine
@testable import Stats
@testable import VMCore
@testable import Virtio

/// The generated tables, read back by ACPICA's disassembler (`iasl`, Debian
/// acpica-tools): any error, or a checksum it rejects, fails the test.
@Suite struct ACPITablesTests {
    static let base: UInt64 = 0xE0000

    /// Splits the blob into tables by following RSDP → XSDT → FADT → DSDT.
    func tables(cpus: Int, keyboard: Bool = false) -> [String: [UInt8]] {
        let blob = ACPITables(cpus: cpus, keyboard: keyboard).build(at: Self.base).bytes
        func at(_ address: UInt64) -> [UInt8] {
            let o = Int(address - Self.base)
            let length = Int(blob[o + 4]) | Int(blob[o + 5]) << 8 | Int(blob[o + 6]) << 16
            return Array(blob[o..<(o + length)])
        }
        func u64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * $1) } }
        var result: [String: [UInt8]] = ["RSDP": Array(blob[0..<36])]
        let xsdt = at(u64(blob, 24))
        result["XSDT"] = xsdt
        for i in 0..<((xsdt.count - 36) / 8) {
            let t = at(u64(xsdt, 36 + i * 8))
            result[String(decoding: t[0..<4], as: UTF8.self)] = t
        }
        result["DSDT"] = at(u64(result["FACP"]!, 140))
        return result
    }

    func disassemble(_ name: String, _ bytes: [UInt8]) throws -> String {
        try withTemporaryDirectory("svmm-acpi") { dir in
        let file = dir.appendingPathComponent("\(name).dat")
        try Data(bytes).write(to: file)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/iasl")
        p.arguments = ["-d", file.path]
        p.currentDirectoryURL = dir
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let log = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "iasl: \(log)")
        #expect(!log.contains("Error"), "iasl: \(log)")
        return try String(contentsOf: dir.appendingPathComponent("\(name).dsl"), encoding: .utf8)
    }
    }

    @Test func everyTableHasAValidChecksum() throws {
        for (name, bytes) in tables(cpus: 4) {
            if name == "RSDP" {
                #expect(bytes[0..<20].reduce(0, &+) == 0)
                #expect(bytes.reduce(0, &+) == 0)
            } else {
                #expect(bytes.reduce(UInt8(0), &+) == 0, "\(name) checksum")
            }
        }
    }

    @Test func dsdtDescribesCOM1AndSoftOff() throws {
        let dsl = try disassemble("dsdt", tables(cpus: 1)["DSDT"]!)
        #expect(dsl.contains("Device (COM1)"))
        #expect(dsl.contains("EisaId (\"PNP0501\")"))
        #expect(dsl.contains("0x03F8"))
        #expect(dsl.contains("IRQNoFlags ()\n") && dsl.contains("{4}"))
        #expect(dsl.contains("Name (_S5, Package (0x04)"))
        #expect(dsl.contains("Device (PCI0)") && dsl.contains("EisaId (\"PNP0A03\")"))
        #expect(dsl.contains("WordBusNumber (ResourceProducer"))
        #expect(dsl.contains("0xFEBFFFFF"))
        #expect(dsl.contains("Device (PEVT)") && dsl.contains("\"QEMU0001\""))
    }

    /// With the keyboard: the FADT says an 8042 is there and the DSDT
    /// describes it (PNP0303: ports 0x60 and 0x64, IRQ 1); without, neither.
    @Test func theKeyboardControllerIsNamedOnlyWhenThereIsOne() throws {
        let with = tables(cpus: 1, keyboard: true), without = tables(cpus: 1)
        let dsl = try disassemble("dsdt", with["DSDT"]!)
        #expect(dsl.contains("Device (PS2K)") && dsl.contains("EisaId (\"PNP0303\")"), "\(dsl)")
        #expect(dsl.contains("0x0060") && dsl.contains("0x0064") && dsl.contains("{1}"))
        #expect(try !disassemble("dsdt", without["DSDT"]!).contains("PNP0303"))
        #expect(try disassemble("facp", with["FACP"]!).contains("8042 Present on ports 60/64 (V2) : 1"))
        #expect(try disassemble("facp", without["FACP"]!).contains("8042 Present on ports 60/64 (V2) : 0"))
        for (name, bytes) in with where name != "RSDP" { #expect(bytes.reduce(UInt8(0), &+) == 0, "\(name) checksum") }
    }

    @Test func madtListsOneLocalAPICPerCPUAndTheIOAPIC() throws {
        let dsl = try disassemble("apic", tables(cpus: 4)["APIC"]!)
        #expect(dsl.components(separatedBy: "Subtable Type : 00 [Processor Local APIC]").count - 1 == 4)
        #expect(dsl.contains("Local Apic ID : 03"))
        #expect(dsl.contains("Subtable Type : 01 [I/O APIC]"))
        #expect(dsl.contains("Address : FEC00000"))
    }

    @Test func fadtIsHardwareReducedWithSleepAndResetRegisters() throws {
        let dsl = try disassemble("facp", tables(cpus: 1)["FACP"]!)
        #expect(dsl.contains("Hardware Reduced (V5) : 1"))
        #expect(dsl.contains("Reset Register Supported (V2) : 1"))
        #expect(dsl.contains("Address : 0000000000000600"), "sleep control at port 0x600")
        #expect(dsl.contains("Address : 0000000000000602"), "reset register at port 0x602")
    }

    @Test func xsdtListsFADTAndMADT() throws {
        let t = tables(cpus: 2)
        let x = try disassemble("xsdt", t["XSDT"]!)
        #expect(x.contains("ACPI Table Address   0"))
        #expect(x.contains("ACPI Table Address   1"))
        // RSDP (iasl does not disassemble it alone): signature, revision 2, length 36.
        let r = t["RSDP"]!
        #expect(Array(r[0..<8]) == Array("RSD PTR ".utf8))
        #expect(r[15] == 2 && r[20] == 36)
    }
}
