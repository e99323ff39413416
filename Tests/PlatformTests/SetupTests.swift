import Foundation
import Testing

/// What the scripts and tests call is installed by Scripts/setup on a fresh
/// machine: every program they call comes from a package on Scripts/programs.
@Suite struct SetupTests {
    @Test func everyProgramTheScriptsAndTestsCallIsOnTheSetupList() throws {
        let r = try runProgram(repoPath("Scripts/check-programs"), [])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains(", 0 problems"), "\(r.stdout)")
    }

    /// The check can fail: a script that calls cpio, in a checkout whose list
    /// lacks cpio, is named.
    @Test func aProgramMissingFromTheListIsNamed() throws {
        let root = temporaryPath("check-programs-root")
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root + "/Scripts", withIntermediateDirectories: true)
        let list = try String(contentsOfFile: repoPath("Scripts/programs"), encoding: .utf8)
            .split(separator: "\n").filter { !$0.hasPrefix("cpio ") }.joined(separator: "\n")
        try list.write(toFile: root + "/Scripts/programs", atomically: true, encoding: .utf8)
        try "#!/bin/sh\nfind . | cpio -o -H newc > out.cpio\n".write(toFile: root + "/Scripts/pack", atomically: true, encoding: .utf8)
        let r = try runProgram(repoPath("Scripts/check-programs"), ["--root", root])
        #expect(r.status == 1, "\(r.stdout)")
        #expect(r.stdout.contains("Scripts/pack calls cpio, from the Debian package cpio, which Scripts/programs does not list"), "\(r.stdout)")
    }
}
