import CHost
import Foundation
import Testing

/// svmm's own binary is mapped a page at a time (CHost, in optimized
/// builds, as the process starts): the kernel maps no neighbours around
/// each page svmm touches (docs/boot.md, "svmm's own memory"). This test
/// binary links CHost as svmm does.
@Suite struct OwnBinaryTests {
    /// The VmFlags of each mapping of the running program's file, from
    /// /proc/self/smaps.
    func programMappingFlags() throws -> [[Substring]] {
        let program = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        var inProgram = false
        var flags: [[Substring]] = []
        for line in try String(contentsOfFile: "/proc/self/smaps", encoding: .utf8).split(separator: "\n") {
            let fields = line.split(separator: " ")
            if let first = fields.first, first.contains("-"), !first.hasSuffix(":") {
                inProgram = fields.count >= 6 && fields[5...].joined(separator: " ") == program
            } else if inProgram, fields.first == "VmFlags:" {
                flags.append(fields)
            }
        }
        return flags
    }

    /// A debug build (this one, as the tests run it) starts without the
    /// advice; CHost's call gives every mapping of the program's file
    /// MADV_RANDOM: "rr" among its VmFlags.
    @Test func theProgramsMappingsAreAdvisedRandom() throws {
        #if DEBUG
        let before = try programMappingFlags()
        #expect(before.count >= 2 && before.allSatisfy { !$0.contains("rr") },
                "a debug build advised at start: \(before.map { $0.joined(separator: " ") })")
        #endif
        chost_map_own_binary_sparsely()
        let flags = try programMappingFlags()
        #expect(flags.count >= 2, "the program's mappings in smaps: \(flags.count)")
        for f in flags { #expect(f.contains("rr"), "\(f.joined(separator: " "))") }
    }
}
