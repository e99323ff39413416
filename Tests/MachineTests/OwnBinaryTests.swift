import Foundation
import Testing

/// svmm's own binary is mapped a page at a time (CHost's constructor): the
/// kernel maps no neighbours around each page svmm touches (docs/boot.md,
/// "svmm's own memory"). This test binary links CHost as svmm does.
@Suite struct OwnBinaryTests {
    /// Every mapping of the running program's file is advised MADV_RANDOM:
    /// "rr" among its VmFlags in /proc/self/smaps.
    @Test func theProgramsMappingsAreAdvisedRandom() throws {
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
        #expect(flags.count >= 2, "the program's mappings in smaps: \(flags.count)")
        for f in flags { #expect(f.contains("rr"), "\(f.joined(separator: " "))") }
    }
}
