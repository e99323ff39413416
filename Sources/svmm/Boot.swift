import Stats
import VMCore
import ArgumentParser
import Dispatch
import Glibc
import KVM
import Machine

struct Boot: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot",
        abstract: "Boot a Linux kernel with an initramfs.",
        discussion: """
            With no --kernel, boots the default test guest from the artifact cache
            (Scripts/guest-artifacts; $SVMM_CACHE or ~/.cache/svmm).

            The guest's console is COM1 (ttyS0) on this terminal, or hvc0 with
            --console virtio; stdin goes to the guest (raw mode on a terminal;
            Ctrl-C goes to the guest too). Console keys, on a terminal or not:
            Ctrl-A x quits (exit 130), Ctrl-A p pauses and resumes the guest,
            Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A h lists them. A virtio-rng
            device feeds the guest's /dev/hwrng unless --no-rng.

            Examples:
              svmm boot
              svmm boot --kernel bzImage --initrd initrd.gz --cmdline "console=ttyS0 quiet"
              svmm boot --kernel bzImage --memory 1G --timeout 30s
              svmm boot --cpus 2 --stats run.jsonl --stats-summary
              svmm boot --console virtio
              svmm boot --disk root.img --disk data.img,ro,serial=data1
              svmm boot --shell            (a shell in the test guest; Ctrl-A x ends svmm)

            Exit status: 0 guest powered off, 10 guest rebooted, 11 guest panicked
            (pvpanic), 12 triple fault, (VALUE << 1) | 1 with --test-devices when the
            guest writes VALUE to isa-debug-exit,
            65 not a bootable kernel/initrd, 66 file or disk unreadable, 69 no usable
            /dev/kvm, 70 KVM internal error, 73 --stats/--stats-listen cannot be
            created, 75 a disk in use by another process, 124 --timeout, 130
            Ctrl-A x or SIGINT, 143 SIGTERM.
            """
    )

    @Option(help: "Kernel image: a bzImage, an ELF vmlinux with a PVH note, or a Multiboot kernel (kvm-unit-tests' programs). Default: the test guest's.")
    var kernel: String?

    @Option(help: "Initramfs (a Multiboot kernel's one module). Default: the test guest's (when --kernel is not given).")
    var initrd: String?

    @Option(help: ArgumentHelp("Kernel command line.",
                               discussion: "Default: '\(BootConfiguration.defaultCommandLine)', or '\(BootConfiguration.virtioConsoleCommandLine)' with --console virtio; none for a Multiboot kernel, whose command line is its path and then these arguments."))
    var cmdline: String?

    @Flag(help: ArgumentHelp("The test guest's interactive shell on its console (adds svmm_shell=1 to the command line); the guest powers off when the shell exits.",
                             discussion: "Scripts/boot passes it when stdin is a terminal and no --cmdline is given."))
    var shell = false

    @Option(help: "The guest's console device: serial (COM1, ttyS0) or virtio (virtio-console on PCI, hvc0; COM1 still shows early boot messages).")
    var console: ConsoleDevice = .serial

    @Flag(inversion: .prefixedNo, help: "A virtio-rng entropy device on PCI (fed by the host's getrandom).")
    var rng = true

    @Flag(help: "An in-kernel i8254 PIT (ports 0x40-0x43, 0x61), for guests without kvm-clock or a local APIC timer; Linux needs none.")
    var pit = false

    @Flag(help: "The PC keyboard controller (i8042) with a keyboard, named in the ACPI tables, as `svmm serve` has it for Ctrl-Alt-Del; Linux then probes it at boot.")
    var i8042 = false

    @Flag(help: ArgumentHelp("QEMU's test devices, as kvm-unit-tests uses them: isa-debug-exit at port 0xf4 (a write of VALUE ends svmm with status (VALUE << 1) | 1).",
                             discussion: "The guest chooses that status, so an odd status (svmm's own 1, 11, 65, 69, 73, 75, 77, 143) can come from either; svmm's last line on stderr says which."))
    var testDevices = false

    @Option(name: .customLong("disk"), help: ArgumentHelp(
        "A disk: PATH[,ro][,serial=ID][,cache=writeback|none|unsafe][,discard=on|off]; repeat for more.",
        discussion: "A raw image file or host block device, the guest's vda, vdb, ... in order (virtio-blk). ro: opened read-only, advertised so, writes fail. cache=writeback (default): a guest flush is an fdatasync; none: the same, bypassing the host's page cache (O_DIRECT); unsafe: flushes are acknowledged without syncing. The image is locked while svmm runs: a second svmm writing it is refused (exit 75)."))
    var disks: [String] = []

    @Option(name: .customLong("net"), help: ArgumentHelp(
        "A network interface: tap=NAME[,mac=MAC][,queues=N][,vhost=on|off]; repeat for more.",
        discussion: "NAME is an existing TAP device (svmm never creates one), the guest's eth0, eth1, ... in order (virtio-net). mac: the guest's address (default: stable for the TAP's name, locally administered). queues: queue pairs (default one per vCPU; one on a TAP made without multi-queue support). vhost=on: the host kernel carries the frames (vhost-net); without /dev/vhost-net, one line says so and svmm does. A missing or non-TAP NAME exits 68, a TAP in use 75, one not yours 77."))
    var nets: [String] = []

    @Option(help: "Number of vCPUs.")
    var cpus: Int = 1

    @Option(help: "Guest RAM, e.g. 512M, 2G.")
    var memory: String = "512M"

    @Option(help: "Stop the guest after this long, e.g. 30s, 2m, 500ms (exit 124).")
    var timeout: String?

    @Option(help: "How to enter a bzImage: auto (PVH when its payload decompresses on the host to a PVH kernel, else linux), linux (the kernel decompresses itself), pvh.")
    var bootProtocol: BootProtocol = .auto

    @Option(parsing: .unconditional, help: ArgumentHelp("Add or mask CPU features by /proc/cpuinfo name, e.g. -cx16,+x2apic.",
                               discussion: "Known names: \(CPUFeatures.names.joined(separator: " "))"))
    var cpuFeatures: String?

    @Option(help: "Path of the KVM device.")
    var device: String = "/dev/kvm"

    func validate() throws {
        guard (1...255).contains(cpus) else { throw ValidationError("--cpus must be between 1 and 255") }
        guard let bytes = Sizes.bytes(memory) else { throw ValidationError("--memory '\(memory)' is not a size (e.g. 512M, 2G)") }
        guard bytes >= 32 << 20 else { throw ValidationError("--memory must be at least 32M") }
        if let timeout, Sizes.seconds(timeout) == nil { throw ValidationError("--timeout '\(timeout)' is not a duration (e.g. 30s, 2m, 500ms)") }
        if let cpuFeatures {
            do { _ = try CPUFeatures.parse(cpuFeatures) } catch { throw ValidationError(error.message) }
        }
        for spec in disks {
            do { _ = try DiskSpec.parse(spec) } catch { throw ValidationError(error.message) }
        }
        for spec in nets {
            do { _ = try NetSpec.parse(spec) } catch { throw ValidationError(error.message) }
        }
    }

    @Flag(help: "Print on stderr how long svmm's own setup took and when the guest reached its boot marker (123 written to MMIO 0xD0000000).")
    var bootTime = false

    @Flag(help: "Print on stderr how many exits to userspace the guest caused, by reason, port and MMIO address, and each disk's requests, flushes and errors.")
    var exitStats = false

    @OptionGroup(title: "Exit telemetry")
    var telemetry: TelemetryOptions

    /// The request these options make: the default test guest's kernel and
    /// initrd when no --kernel is given.
    func request(started: UInt64) -> MachineRequest {
        let cache = ArtifactCache.directory
        var r = MachineRequest(kernelPath: kernel ?? cache + "/guest/bzImage")
        if kernel == nil { r.kernelHint = "; build the default test guest with Scripts/guest-artifacts" }
        r.initrdPath = initrd ?? (kernel == nil ? cache + "/guest/initramfs.cpio.gz" : nil)
        r.commandLine = cmdline
        r.extraCommandLine = shell ? " svmm_shell=1" : ""
        r.cpus = cpus
        r.memoryBytes = Sizes.bytes(memory)!
        r.timeoutSeconds = timeout.flatMap(Sizes.seconds)
        r.bootProtocol = bootProtocol
        r.console = console
        r.entropy = rng
        r.pit = pit
        r.testDevices = testDevices
        r.keyboard = i8042
        r.telemetry = telemetry.enabled
        r.reportBootTime = bootTime
        r.kvmPath = device
        // All parsed in validate().
        r.disks = disks.map { try! DiskSpec.parse($0) }
        r.nets = nets.map { try! NetSpec.parse($0) }
        if let cpuFeatures { r.cpuFeatures = try! CPUFeatures.parse(cpuFeatures) }
        return r
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        let stopSignals = StopSignals.block()
        let statsOutput = telemetry.openOutput()
        // The first line on a terminal (kvm-sandbox sets SVMM_CONSOLE_TERMINAL
        // when the terminal is on its side of the sandbox).
        if isatty(0) == 1 || getenv("SVMM_CONSOLE_TERMINAL") != nil { Messages.line(ConsoleEscape.help) }
        let output: ConsoleOutput, input: ConsoleInput
        do {
            output = try ConsoleOutput(fd: 1)
            input = try ConsoleInput(virtio: console == .virtio)
        } catch { fail("\(error)", .failure) }
        let machine: LinuxMachine
        do { machine = try request(started: started).build(started: started, output: output, input: input) } catch {
            fail(error.message, error.status)
        }
        let session = telemetry.enabled
            ? TelemetrySession(options: telemetry, output: statsOutput, telemetry: machine.telemetry,
                               vmStats: machine.vmStats, devices: machine.deviceRanges)
            : nil
        session?.start()
        if bootTime, let entry = machine.entry {
            let how = switch (entry.mode, entry.decompressed) {
            case (.pvh32, .some(let c)): "PVH, \(c) payload decompressed on the host"
            case (.pvh32, nil): "PVH"
            case (.linux64, _): "the Linux boot protocol's 64-bit entry"
            case (.multiboot32, _): "Multiboot"
            }
            // svmm's own share of the boot: loading, decompression, tables, devices.
            let ms = (DispatchTime.now().uptimeNanoseconds - started) / 1_000_000
            Messages.line("svmm: entering the kernel through \(how) after \(ms) ms of host setup")
        }

        // Console input: stdin, less the escape commands, to COM1 or the virtio-console.
        Terminal.enterRawMode()
        do { try input.start(serial: machine.serial, machine: machine.machine) } catch { fail("\(error)", .failure) }
        StopSignals.handle(stopSignals) { machine.stop(.interrupted(signal: $0)) }

        let result = Result { try machine.run() }
        // Every byte the guest wrote reaches stdout before svmm says how it ended.
        output.close()
        Terminal.restore()
        let outcome: MachineExit
        do { outcome = try result.get() } catch { fail("\(error)", .failure) }
        session?.finish()
        if exitStats { MachineReport.exitStats(machine) }
        // Output flushed, stats written: the VM's teardown (the irqchip's, ~10 ms) need not delay the exit.
        detachTeardown()
        try MachineReport.outcome(outcome, machine: machine, timeout: timeout ?? "")
    }
}

/// Where Scripts/guest-artifacts keeps its outputs.
enum ArtifactCache {
    static var directory: String {
        if let c = getenv("SVMM_CACHE") { return String(cString: c) }
        let home = getenv("HOME").map { String(cString: $0) } ?? "/root"
        return home + "/.cache/svmm"
    }
}

/// Parsing of human sizes and durations on the command line.
enum Sizes {
    static func bytes(_ text: String) -> UInt64? {
        let t = text.uppercased().replacingSuffix("IB", with: "").replacingSuffix("B", with: "")
        let unit: UInt64? = switch t.last {
        case "K": 1 << 10
        case "M": 1 << 20
        case "G": 1 << 30
        case "T": 1 << 40
        default: nil
        }
        if let unit {
            return UInt64(t.dropLast()).flatMap { $0.multipliedReportingOverflow(by: unit).overflow ? nil : $0 * unit }
        }
        return UInt64(t).map { $0 << 20 }   // plain number: MiB
    }

    static func seconds(_ text: String) -> Double? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            return Double(text.dropLast(suffix.count)).map { $0 * scale }.flatMap { $0 > 0 ? $0 : nil }
        }
        return Double(text).flatMap { $0 > 0 ? $0 : nil }
    }
}

extension String {
    func replacingSuffix(_ suffix: String, with replacement: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) + replacement : self
    }
}



extension BootProtocol: ExpressibleByArgument {}
extension ConsoleDevice: ExpressibleByArgument {}
