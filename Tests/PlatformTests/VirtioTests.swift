import Foundation
import Testing

/// The lines "VIRTIO-FACT name=value" that Firmware/initramfs/virtio-check prints.
func virtioFacts(_ output: String) -> [String: String] {
    var facts: [String: String] = [:]
    for line in output.split(whereSeparator: \.isNewline) {
        guard let r = line.range(of: "VIRTIO-FACT ") else { continue }
        let kv = line[r.upperBound...].trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "=", maxSplits: 1)
        if kv.count == 2 { facts[String(kv[0])] = String(kv[1]) } else if kv.count == 1 { facts[String(kv[0])] = "" }
    }
    return facts
}

/// virtio-pci with MSI-X, virtio-console as hvc0 and virtio-rng, with the
/// Debian cloud kernel loading virtio_pci, virtio_console and virtio-rng from
/// the initramfs, through the sandbox; and the same guest script under QEMU's
/// virtio-serial and virtio-rng as the reference.
@Suite(.serialized) struct VirtioTests {
    static let check = "console=ttyS0 console=hvc0 panic=-1 quiet svmm_console=hvc0 svmm_cmd=\"sh /lib/svmm/virtio-check\""
    static let cache = artifactCache

    /// The facts both VMMs must agree on.
    static let compared = ["pci-ids", "drivers", "hwrng", "hwrng-bytes", "hwrng-incompressible", "console-active", "stdout"]

    /// One sandbox session: svmm, then QEMU, each framed.
    static let results: Result<(svmm: Finished, svmmErr: String, qemu: String), Error> = Result {
        let qemu = ["qemu-system-x86_64", "-M", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1",
                    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                    "-chardev", "stdio,id=c0,mux=on", "-serial", "chardev:c0",
                    "-device", "virtio-serial-pci,disable-legacy=on", "-device", "virtconsole,chardev=c0",
                    "-device", "virtio-rng-pci,disable-legacy=on",
                    "-kernel", "\(cache)/guest/bzImage", "-initrd", "\(cache)/guest/initramfs.cpio.gz", "-append", check]
        let quoted = { (args: [String]) in args.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ") }
        let script = """
            err=$(mktemp)
            echo '=== svmm'
            \(quoted([svmmPath, "boot", "--console", "virtio", "--memory", "256M", "--timeout", "400s", "--exit-stats", "--cmdline", check])) </dev/null 2>$err
            echo "=== svmm status $?"
            echo '=== svmm stderr'; cat $err
            echo '=== qemu'
            timeout 600 \(quoted(qemu)) </dev/null
            echo "=== qemu status $?"
            """
        let r = try sandbox(["--timeout", "1500", "--", "sh", "-c", script])
        let parts = r.stdout.components(separatedBy: "=== ")
        func part(_ name: String) -> String { parts.first { $0.hasPrefix(name + "\n") } ?? "" }
        let status = parts.first { $0.hasPrefix("svmm status") }.flatMap { Int32($0.dropFirst(12).prefix { $0.isNumber }) } ?? -1
        return (Finished(status: status, stdout: part("svmm"), stderr: r.stderr), part("svmm stderr"), part("qemu"))
    }

    @Test func linuxDrivesVirtioConsoleAndEntropyOverPCIWithMSIX() throws {
        let (svmm, svmmErr, _) = try Self.results.get()
        #expect(svmm.status == 0, "svmm: \(svmm.stdout)\n\(svmmErr)\n\(svmm.stderr)")
        let facts = virtioFacts(svmm.stdout)
        #expect(facts["pci-ids"] == "0x1043,0x1044,", "\(svmm.stdout)")              // modern console and entropy ids
        #expect(facts["drivers"] == "virtio_console,virtio_rng,")
        // Vectors: console config + receiveq + transmitq, rng config + requestq.
        #expect(Int(facts["msi-vectors"] ?? "") ?? 0 >= 5, "\(svmm.stdout)")
        #expect(facts["msi-fired"]?.contains("input") == true, "queues whose MSI-X vectors fired: \(facts["msi-fired"] ?? "none")")
        #expect(facts["hwrng"] == "virtio_rng.0")
        #expect(facts["hwrng-bytes"] == "65536")
        #expect(facts["hwrng-incompressible"] == "1")
        #expect(facts["console-active"]?.contains("hvc0") == true)
        #expect(facts["stdout"] == "/dev/hvc0")                                         // the guest script wrote through hvc0
        #expect(svmm.stdout.contains("SVMM-GUEST-SCRIPT-EXIT=0"))
        // 128 KiB from /dev/hwrng is hundreds of requests: with ioeventfd their
        // notifications never exit to svmm (the rng's notify address is absent
        // from the exit summary and all MMIO exits together stay few).
        let line = svmmErr.split(whereSeparator: \.isNewline).first { $0.contains("exits to userspace") } ?? ""
        #expect(!line.contains("0xe000b000"), "\(line)")
        let mmio = line.range(of: "mmio ").flatMap { Int(line[$0.upperBound...].prefix { $0.isNumber }) } ?? .max
        #expect(mmio < 500, "\(line)")
    }

    @Test func qemusVirtioSerialAndRngGiveTheSameObservableResults() throws {
        let (svmm, _, qemu) = try Self.results.get()
        let ours = virtioFacts(svmm.stdout), theirs = virtioFacts(qemu)
        try #require(!theirs.isEmpty, "QEMU printed no facts: \(qemu)")
        for fact in Self.compared {
            #expect(ours[fact] == theirs[fact], "\(fact): svmm \(ours[fact] ?? "-"), QEMU \(theirs[fact] ?? "-")")
        }
        #expect(qemu.contains("SVMM-GUEST-SCRIPT-EXIT=0"))
    }

    @Test func aCommandTypedIntoTheShellOnHvc0IsAnswered() throws {
        try converseWithGuestShell(["--console", "virtio", "--timeout", "400s",
                                    "--cmdline", "console=ttyS0 console=hvc0 panic=-1 quiet svmm_shell=1 svmm_console=hvc0"],
                                   command: "echo answer-$((6*7)) on $(tty)", answer: "answer-42 on /dev/hvc0")
    }
}
