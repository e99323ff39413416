import Foundation
import Testing

var artifactCache: String {
    ProcessInfo.processInfo.environment["SVMM_CACHE"]
        ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/svmm").path
}

func modificationDate(_ path: String) throws -> Date {
    try FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as! Date
}

@Suite(.serialized) struct GuestArtifactsTests {
    static let outputs = ["guest/bzImage", "guest/vmlinux", "guest/initramfs.cpio.gz", "sandbox/vmlinux", "sandbox/initramfs.cpio"]

    @Test func aSecondRunDownloadsNothingAndBuildsNothing() throws {
        let first = try runProgram(repoPath("Scripts/guest-artifacts"), [])
        #expect(first.status == 0, "\(first.stderr)")
        let before = try Self.outputs.map { try modificationDate(artifactCache + "/" + $0) }
        let second = try runProgram(repoPath("Scripts/guest-artifacts"), [])
        #expect(second.status == 0)
        #expect(second.stderr.contains("downloaded 0, built 0"), "\(second.stderr)")
        let after = try Self.outputs.map { try modificationDate(artifactCache + "/" + $0) }
        #expect(before == after)
        // It states what it produced: package versions and sha256 of each output.
        #expect(second.stdout.contains("package linux-image-"))
        #expect(second.stdout.contains("output  guest/vmlinux sha256="))
        #expect(second.stdout.contains("payload lz4") || second.stdout.contains("payload "))
    }

    @Test func aCorruptedCachedFileIsDetectedAndRebuilt() throws {
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-cache-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let cp = try runProgram("/bin/cp", ["-a", artifactCache, copy])
        #expect(cp.status == 0)
        let env = ["SVMM_CACHE": copy]
        #expect(try runProgram(repoPath("Scripts/guest-artifacts"), ["--check"], environment: env).status == 0)

        // Flip one byte in the middle of an output.
        let victim = copy + "/guest/initramfs.cpio.gz"
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: victim))
        try handle.seek(toOffset: 1000)
        let byte = try handle.read(upToCount: 1)![0]
        try handle.seek(toOffset: 1000)
        try handle.write(contentsOf: Data([byte ^ 0xFF]))
        try handle.close()

        let check = try runProgram(repoPath("Scripts/guest-artifacts"), ["--check"], environment: env)
        #expect(check.status == 3)
        #expect(check.stderr.contains("guest/initramfs.cpio.gz is corrupted (sha256 mismatch)"), "\(check.stderr)")

        let repair = try runProgram(repoPath("Scripts/guest-artifacts"), [], environment: env)
        #expect(repair.status == 0, "\(repair.stderr)")
        #expect(repair.stderr.contains("downloaded 0, built 7"), "\(repair.stderr)")   // every output: the seven of OUTPUTS
        #expect(try runProgram(repoPath("Scripts/guest-artifacts"), ["--check"], environment: env).status == 0)
    }

    @Test func aCorruptedPackageIsDetected() throws {
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-cache-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: copy) }
        #expect(try runProgram("/bin/cp", ["-a", artifactCache, copy]).status == 0)
        let debs = try FileManager.default.contentsOfDirectory(atPath: copy + "/debs").filter { $0.hasPrefix("busybox-static") }
        let deb = try #require(debs.first)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: copy + "/debs/" + deb))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("junk".utf8))
        try handle.close()
        let check = try runProgram(repoPath("Scripts/guest-artifacts"), ["--check"], environment: ["SVMM_CACHE": copy])
        #expect(check.status == 3)
        #expect(check.stderr.contains("debs/\(deb) is corrupted"), "\(check.stderr)")
    }

    /// The test guest's /init, checked independently of svmm: QEMU (software
    /// emulation, no KVM needed) boots the cloud kernel with the initramfs and
    /// a virtio-rng device; init must load the virtio modules in dependency
    /// order, print its marker and run the script appended as a second cpio.
    @Test func theTestInitramfsBootsToItsMarkerUnderQEMU() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svmm-initrd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // A second archive adding /svmm-script (the kernel unpacks both).
        let script = "echo script-ran; cat /proc/sys/kernel/random/entropy_avail >/dev/null; ls /sys/bus/virtio/drivers; exit 3\n"
        try Data(script.utf8).write(to: dir.appendingPathComponent("svmm-script"))
        let cpio = try runProgram("/bin/sh", ["-c", "cd \(dir.path) && echo svmm-script | cpio -o -H newc > extra.cpio"])
        #expect(cpio.status == 0, "\(cpio.stderr)")
        let combined = dir.appendingPathComponent("initrd").path
        // Each archive must start 4-byte aligned: pad the first with zeros.
        let cat = try runProgram("/bin/sh", ["-c", "cat \(artifactCache)/guest/initramfs.cpio.gz > \(combined) && " +
            "truncate -s %4 \(combined) && cat \(dir.path)/extra.cpio >> \(combined)"])
        #expect(cat.status == 0)

        let r = try runProgram("/usr/bin/timeout", ["300", "qemu-system-x86_64", "-nodefaults", "-no-user-config",
            "-display", "none", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "512",
            "-kernel", artifactCache + "/guest/bzImage", "-initrd", combined,
            "-append", "console=ttyS0 panic=-1 quiet", "-no-reboot", "-serial", "stdio",
            "-device", "virtio-rng-pci"])
        #expect(r.status == 0, "qemu: \(r.stderr)")
        let marker = try #require(r.stdout.split(whereSeparator: \.isNewline).first { $0.hasPrefix("SVMM-GUEST-READY") }, "console: \(r.stdout)")
        #expect(marker.contains("nproc=2"))
        // QEMU's virtio-rng-pci on the pc machine is transitional (0x1005).
        #expect(marker.contains("1af4:1005"), "virtio-rng listed: \(marker)")
        #expect(marker.contains("virtio=virtio_rng"), "\(marker)")
        #expect(r.stdout.contains("script-ran"))
        #expect(r.stdout.contains("virtio_console"), "driver registered after its dependencies loaded")
        #expect(r.stdout.contains("SVMM-GUEST-SCRIPT-EXIT=3"))
    }
}
