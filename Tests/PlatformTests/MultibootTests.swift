import Foundation
import Testing

/// kvm-unit-tests' boot and test devices: svmm's own Multiboot program
/// (Firmware/multiboot/mbinfo.c) prints what it was handed and ends through
/// isa-debug-exit. It takes no interrupt, so it runs on this host's KVM;
/// QEMU (TCG, from Scripts/setup) runs the same program as the reference.
@Suite(.serialized, .enabled(if: FileManager.default.isWritableFile(atPath: "/dev/kvm"), "needs a writable /dev/kvm to run a Multiboot guest"))
struct MultibootTests {
    static let program = repoPath("Firmware/build/mbinfo.elf")
    /// More than 3.5 GiB: RAM continues above 4 GiB.
    static let memory = "5G"

    /// The module: bytes that are not all alike, and their FNV-1a as the program computes it.
    static func module() throws -> (path: String, size: Int, fnv1a: String) {
        let path = temporaryPath("multiboot-module")
        var bytes = [UInt8](repeating: 0, count: 300_007)
        var x: UInt32 = 12345
        for i in bytes.indices { x = x &* 1_103_515_245 &+ 12345; bytes[i] = UInt8(truncatingIfNeeded: x >> 16) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        var h: UInt32 = 2_166_136_261
        for b in bytes { h = (h ^ UInt32(b)) &* 16_777_619 }
        return (path, bytes.count, "0x" + String(h, radix: 16))
    }

    /// The reference: QEMU's PC machine with software emulation (the same on
    /// any host) and no default devices.
    static func qemu(_ arguments: [String]) throws -> Finished {
        try runProgram("/usr/bin/qemu-system-x86_64", ["-nodefaults", "-display", "none", "-accel", "tcg", "-M", "pc"] + arguments)
    }

    static func lines(_ output: String, _ prefix: String) -> [String] {
        output.split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
    }

    @Test func everyMultibootFieldAndFwCfgKeyAsAsked() throws {
        let m = try Self.module()
        let r = try runProgram(svmmPath, ["boot", "--kernel", Self.program, "--initrd", m.path, "--cmdline", "first second exit=3",
                                          "--memory", Self.memory, "--cpus", "2", "--test-devices", "--no-rng", "--timeout", "60s"])
        #expect(r.status == 7, "outl(3, 0xf4) is status 7: \(r.stdout) \(r.stderr)")
        #expect(r.stderr.contains("svmm: the guest wrote 0x3 to isa-debug-exit: exit status 7"), "\(r.stderr)")
        let out = r.stdout
        #expect(out.contains("MB magic=0x2badb002 flags=0x24d\n"), "memory, command line, module, memory map, loader name: \(out)")
        // 639 KiB below the EBDA; from 1 MiB to the PCI hole at 3 GiB.
        #expect(out.contains("MB mem_lower=639 mem_upper=\((3 << 20) - 1024)\n"), "\(out)")
        #expect(out.contains("MB cmdline=[\(Self.program) first second exit=3]\n"), "argv[0] is the program: \(out)")
        #expect(out.contains("MB loader=[svmm]\n"), "\(out)")
        #expect(out.contains("MB mods_count=1\n"), "\(out)")
        let module = Self.lines(out, "MB module ")
        #expect(module.count == 1 && module[0].hasSuffix(" size=\(m.size) fnv1a=\(m.fnv1a) string=[\(m.path)]"), "the module's bytes: \(module) want \(m)")
        if let start = module.first?.split(separator: " ").first(where: { $0.hasPrefix("start=0x") }),
           let address = UInt64(start.dropFirst(8), radix: 16) {
            #expect(address % 4096 == 0 && address >= 0x40_0000 && address + UInt64(m.size) <= 0xC000_0000, "page-aligned, above the program: \(start)")
        } else {
            Issue.record("no module start: \(module)")
        }
        #expect(Self.lines(out, "MB mmap ") == [
            "MB mmap base=0x0 length=0x9fc00 type=1",
            "MB mmap base=0xe0000 length=0x20000 type=2",
            "MB mmap base=0x100000 length=0xbff00000 type=1",
            "MB mmap base=0x100000000 length=0x80000000 type=1",
        ], "\(out)")
        #expect(out.contains("MB fw_cfg signature=[QEMU] cpus=2 ram=0x140000000\n"), "\(out)")
    }

    /// kvm-unit-tests' verdicts: 0 → 1 (pass), 1 → 3 (fail), 38 → 77 (skip).
    @Test(arguments: [(0, 1), (1, 3), (38, 77), (127, 255)])
    func debugExitStatusAsQEMUGivesIt(code: Int, status: Int32) throws {
        let r = try runProgram(svmmPath, ["boot", "--kernel", Self.program, "--cmdline", "exit=\(code)", "--memory", "64M",
                                          "--test-devices", "--no-rng", "--timeout", "60s"])
        #expect(r.status == status, "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.contains("MB cmdline=[\(Self.program) exit=\(code)]"), "\(r.stdout)")
        #expect(!r.stdout.contains("MB mods_count"), "no module without --initrd: \(r.stdout)")
    }

    /// Without --test-devices there is no isa-debug-exit: the write goes
    /// nowhere and the program halts with interrupts off until --timeout.
    @Test func noDebugExitWithoutTheFlag() throws {
        let r = try runProgram(svmmPath, ["boot", "--kernel", Self.program, "--cmdline", "exit=3", "--memory", "64M", "--no-rng", "--timeout", "1s"])
        #expect(r.status == 124, "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.contains("MB fw_cfg signature=[QEMU] cpus=1 ram=0x4000000"), "\(r.stdout)")
    }

    /// The same program under QEMU (`-kernel`, isa-debug-exit as
    /// kvm-unit-tests' runner adds it): what both must agree on agrees.
    @Test func qemuGivesTheSameAnswers() throws {
        let m = try Self.module()
        let q = try Self.qemu(["-kernel", Self.program, "-initrd", m.path, "-append", "first second exit=5", "-m", Self.memory, "-smp", "3",
                               "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-serial", "stdio"])
        let s = try runProgram(svmmPath, ["boot", "--kernel", Self.program, "--initrd", m.path, "--cmdline", "first second exit=5",
                                          "--memory", Self.memory, "--cpus", "3", "--test-devices", "--no-rng", "--timeout", "60s"])
        #expect(q.status == 11 && s.status == 11, "qemu \(q.status) svmm \(s.status): \(q.stdout) \(q.stderr) \(s.stderr)")
        for prefix in ["MB magic=0x2badb002", "MB mem_lower=", "MB cmdline=", "MB mods_count=", "MB fw_cfg "] {
            let a = Self.lines(q.stdout, prefix).map { $0.replacingOccurrences(of: #" flags=0x[0-9a-f]+| mem_upper=\d+"#, with: "", options: .regularExpression) }
            let b = Self.lines(s.stdout, prefix).map { $0.replacingOccurrences(of: #" flags=0x[0-9a-f]+| mem_upper=\d+"#, with: "", options: .regularExpression) }
            #expect(!a.isEmpty && a == b, "\(prefix): QEMU \(a), svmm \(b)")
        }
        // The module's bytes and name (QEMU puts it elsewhere).
        let strip = { (l: String) in l.replacingOccurrences(of: #"start=0x[0-9a-f]+ "#, with: "", options: .regularExpression) }
        #expect(Self.lines(q.stdout, "MB module ").map(strip) == Self.lines(s.stdout, "MB module ").map(strip), "\(q.stdout) \(s.stdout)")
        // RAM above 4 GiB: the same 2 GiB at 4 GiB in both maps.
        #expect(q.stdout.contains("MB mmap base=0x100000000 length=0x80000000 type=1") && s.stdout.contains("MB mmap base=0x100000000 length=0x80000000 type=1"))
    }

    /// ACPI through the RSDT, the PM timer (read until it wraps), the CMOS
    /// clock, pc-testdev and pci-testdev, checked by Firmware/multiboot/devices.c
    /// under svmm and under QEMU with the devices kvm-unit-tests' runner adds.
    @Test func kvmUnitTestsDevicesAnswerAsQEMUsDo() throws {
        let program = repoPath("Firmware/build/devices.elf")
        let s = try runProgram(svmmPath, ["boot", "--kernel", program, "--test-devices", "--no-rng", "--memory", "64M", "--timeout", "120s"])
        #expect(s.status == 1, "every check passed: \(s.stdout) \(s.stderr)")
        #expect(!s.stdout.contains("FAIL:") && s.stdout.contains("SUMMARY: 26 tests, 0 unexpected failures"), "\(s.stdout)")
        #expect(s.stdout.contains("DEV pm_tmr_blk=0x608 "), "\(s.stdout)")
        #expect(s.stdout.contains("DEV pci-testdev bar0=0xdf000000 size=4096 bar1=0xc001 size=256"), "\(s.stdout)")
        for name in ["mmio-no-eventfd", "mmio-wildcard-eventfd", "mmio-datamatch-eventfd",
                     "portio-no-eventfd", "portio-wildcard-eventfd", "portio-datamatch-eventfd"] {
            #expect(s.stdout.contains("DEV pci-testdev \(name) ") && s.stdout.contains("count=16"), "svmm counts every write: \(name)")
        }
        let q = try Self.qemu(["-m", "64M", "-kernel", program, "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                                 "-device", "pc-testdev", "-device", "pci-testdev", "-serial", "stdio"])
        #expect(q.status == 1, "QEMU: \(q.stdout) \(q.stderr)")
        #expect(Self.lines(q.stdout, "PASS: ") == Self.lines(s.stdout, "PASS: "), "the same checks pass: QEMU \(q.stdout)")
    }

    /// INIT and SIPI from the boot CPU bring every application processor up
    /// in real mode at 0000:0000 (Firmware/multiboot/smp.c). No interrupt
    /// handler runs ("no-irq"): this host's KVM does it.
    @Test(arguments: [1, 2, 4, 8])
    func applicationProcessorsComeUpThroughINITAndSIPI(cpus: Int) throws {
        let r = try runProgram(svmmPath, ["boot", "--kernel", repoPath("Firmware/build/smp.elf"), "--cmdline", "no-irq", "--test-devices",
                                          "--no-rng", "--memory", "64M", "--cpus", String(cpus), "--timeout", "60s"])
        #expect(r.status == 1, "\(r.stdout) \(r.stderr)")
        // KVM's in-kernel local APIC offers x2APIC, which the program then uses (as kvm-unit-tests does).
        #expect(r.stdout.contains("SMP fw_cfg cpus=\(cpus) bsp_apic_id=0 x2apic\n") && r.stdout.contains("SMP online=\(cpus) "), "\(r.stdout)")
        #expect(r.stdout.contains("SUMMARY: 4 tests, 0 unexpected failures"), "\(r.stdout)")
    }

    /// A pc-testdev IRQ line raises an interrupt through the I/O APIC (an
    /// interrupt handler: through the sandbox where this host's KVM cannot
    /// run one), with 2 and 4 vCPUs in one L1 of 4; in the same L1, QEMU
    /// (on L1's KVM) runs it and devices.c as the reference, and QEMU's TCG
    /// here runs it with and without x2APIC.
    @Test func aPCTestdevIRQLineInterruptsThroughTheIOAPIC() throws {
        let program = repoPath("Firmware/build/smp.elf"), devices = repoPath("Firmware/build/devices.elf")
        let boot = { (n: Int) in "\(svmmPath) boot --kernel \(program) --test-devices --no-rng --memory 64M --cpus \(n) --timeout 300s; echo \"STATUS \(n) $?\"" }
        let qemu = { (n: Int, kernel: String, tag: String) in
            "echo \"QEMU-\(tag)\"; timeout 300 qemu-system-x86_64 -nodefaults -no-user-config -display none -accel kvm -M pc -m 64M -smp \(n) "
                + "-kernel \(kernel) -device isa-debug-exit,iobase=0xf4,iosize=4 -device pc-testdev -device pci-testdev -serial stdio; "
                + "echo \"QSTATUS \(tag) $?\""
        }
        let script = [boot(2), boot(4), qemu(2, program, "smp2"), qemu(4, program, "smp4"), qemu(1, devices, "devices")].joined(separator: "; ")
        let r = try sandbox(["--timeout", "1200", "--cpus", "4", "--", "sh", "-c", script])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let svmmPart = r.stdout.components(separatedBy: "QEMU-smp2")[0]
        for n in [2, 4] {
            #expect(svmmPart.contains("SMP fw_cfg cpus=\(n) bsp_apic_id=0 x2apic\n") && svmmPart.contains("SMP online=\(n) ")
                    && svmmPart.contains("STATUS \(n) 1\n"), "\(n) vCPUs: \(r.stdout) \(r.stderr)")
        }
        #expect(svmmPart.components(separatedBy: "PASS: pc-testdev IRQ line 10 through the I/O APIC: taken once").count == 3, "\(r.stdout)")
        #expect(svmmPart.components(separatedBy: "SUMMARY: 7 tests, 0 unexpected failures").count == 3 && !r.stdout.contains("FAIL:"), "\(r.stdout)")
        // QEMU on L1's KVM: the same verdicts (its CPU model there decides xAPIC or x2APIC).
        #expect(r.stdout.contains("QSTATUS smp2 1\n") && r.stdout.contains("QSTATUS smp4 1\n") && r.stdout.contains("QSTATUS devices 1\n"), "\(r.stdout) \(r.stderr)")
        let qemuPart = r.stdout.components(separatedBy: "QEMU-smp2").dropFirst().joined()
        #expect(qemuPart.components(separatedBy: "SUMMARY: 7 tests, 0 unexpected failures").count == 3, "\(qemuPart)")
        #expect(qemuPart.contains("SUMMARY: 26 tests, 0 unexpected failures"), "\(qemuPart)")
        // QEMU's default CPU has no x2APIC, its "max" has: both ways of sending INIT/SIPI and EOIs.
        for (n, cpu, mode) in [(2, "qemu64", "xapic"), (4, "qemu64", "xapic"), (4, "max", "x2apic")] {
            let q = try Self.qemu(["-cpu", cpu, "-m", "64M", "-smp", String(n), "-kernel", program,
                                     "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-device", "pc-testdev", "-serial", "stdio"])
            #expect(q.status == 1 && q.stdout.contains("bsp_apic_id=0 \(mode)\n") && q.stdout.contains("SMP online=\(n) ")
                    && q.stdout.contains("SUMMARY: 7 tests, 0 unexpected failures"), "QEMU \(n) \(cpu): \(q.stdout)")
        }
    }

    /// svmm's exit micro-benchmark guests as Multiboot images (for QEMU's
    /// -kernel): the program runs as under `svmm firmware`, its exits
    /// exactly as many as asked, and QEMU runs the same image to the same end.
    @Test func theExitGuestsRunAsMultibootImages() throws {
        let image = repoPath("Firmware/build/mb-outloop.elf")
        let s = try runProgram(svmmPath, ["boot", "--kernel", image, "--cmdline", "arg=1000", "--test-devices", "--no-rng",
                                          "--memory", "64M", "--exit-stats", "--timeout", "60s"])
        #expect(s.status == 1 && s.stderr.contains("svmm: 1001 exits to userspace: io 1001 (0x80 1000, 0xf4 1)"), "\(s.stderr)")
        for program in ["outloop", "hltloop"] {
            let q = try Self.qemu(["-m", "64M", "-kernel", repoPath("Firmware/build/mb-\(program).elf"), "-append", "arg=100",
                                     "-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
            #expect(q.status == 1, "QEMU \(program): \(q.stdout) \(q.stderr)")
        }
    }
}
