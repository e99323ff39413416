import Stats
import VMCore
import ArgumentParser
import Dispatch
import Glibc
import KVM
import Machine

struct Boot: ParsableCommand {
    static let configuration = CommandConfiguration(
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

    /// Attaches a `--net`'s TAP, or ends svmm with its one line and status.
    func openNet(_ options: NetSpec.Options, cpus: Int) -> NetInterface {
        let wanted = options.queues ?? min(cpus, NetSpec.maxQueues)
        let tap: Tap
        do throws(TapError) { tap = try Tap(name: options.tap, queues: wanted) } catch {
            switch error.problem {
            case .missing, .notATap: fail(error.message, .noSuchTap)
            case .busy: fail(error.message, .inUse)
            case .permission: fail(error.message, .noPermission)
            case .other: fail(error.message, .failure)
            }
        }
        if tap.singleQueueOnly {
            Messages.line("svmm: TAP \(options.tap) was created without multi-queue support: one queue pair, not \(wanted)")
        }
        var vhost = options.vhost
        if vhost {
            do throws(HostError) { _ = try VhostNet() } catch {
                Messages.line("svmm: TAP \(options.tap): vhost=on: \(error); the userspace path runs")
                vhost = false
            }
        }
        return NetInterface(tap: tap, mac: options.mac ?? Tap.defaultMAC(for: options.tap), vhost: vhost)
    }

    /// Opens the files and builds the machine; the kernel and initrd are read
    /// straight into guest RAM.
    func makeMachine(started: UInt64, output: ConsoleOutput, input: ConsoleInput) -> LinuxMachine {
        let cache = ArtifactCache.directory
        let kernelPath = kernel ?? cache + "/guest/bzImage"
        let initrdPath = initrd ?? (kernel == nil ? cache + "/guest/initramfs.cpio.gz" : nil)
        let kernelImage: ImageSource
        do { kernelImage = try ImageSource(path: kernelPath) } catch {
            let hint = kernel == nil ? "; build the default test guest with Scripts/guest-artifacts" : ""
            fail("cannot read kernel \(kernelPath): \(error.reason)\(hint)", .noInput)
        }
        let multiboot = MultibootKernel.isMultiboot(kernelImage)
        var initrdImage: ImageSource?
        if let initrdPath {
            do { initrdImage = try ImageSource(path: initrdPath) } catch {
                fail("cannot read initrd \(initrdPath): \(error.reason)", .noInput)
            }
        }
        var config = BootConfiguration(
            kernel: kernelImage, initrd: initrdImage,
            commandLine: (cmdline ?? (multiboot ? "" : console == .virtio ? BootConfiguration.virtioConsoleCommandLine : BootConfiguration.defaultCommandLine))
                + (shell ? " svmm_shell=1" : ""),
            cpus: cpus, memoryBytes: Sizes.bytes(memory)!,
            timeoutSeconds: timeout.flatMap(Sizes.seconds))
        config.startTime = started
        config.exitTiming = telemetry.enabled
        config.kvmStatistics = telemetry.enabled
        config.bootProtocol = bootProtocol
        config.console = console
        config.entropy = rng
        for spec in disks {
            do {
                config.disks.append(try DiskImage(try DiskSpec.parse(spec)))
            } catch let e as DiskError {
                if case .locked = e.problem { fail(e.message, .inUse) }
                fail(e.message, .noInput)
            } catch {
                fail("\(error)", .usage)
            }
        }
        for spec in nets {
            config.nets.append(openNet(try! NetSpec.parse(spec), cpus: cpus))   // parsed in validate()
        }
        config.pit = pit
        config.testDevices = testDevices
        if let cpuFeatures {
            do { config.cpuFeatures = try CPUFeatures.parse(cpuFeatures) } catch { fail(error.message, .usage) }
        }
        let reportBootTime = bootTime

        do {
            return try LinuxMachine(config: config, kvmPath: device, consoleOutput: { byte in
                output.append(byte)
            }, virtioConsoleOutput: { bytes in
                output.append(bytes)
            }, consoleInput: input.virtioInput, onBootMarker: { ns in
                if reportBootTime { Messages.line("svmm: boot marker reached after \(ns / 1_000_000) ms") }
            })
        } catch let e as LoaderError {
            fail(e.message, .badInput)
        } catch let e as KVMUnavailable {
            fail(e.description, .kvmUnavailable)
        } catch let e as CPUFeatureError {
            fail(e.message, .usage)
        } catch {
            fail("\(error)", .failure)
        }
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        // SIGINT/SIGTERM/SIGHUP are blocked in every thread (threads inherit
        // the mask) and taken by one thread with sigwait: no Dispatch worker
        // threads (8 MiB stacks) in the VMM.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for sig in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&stopSignals, sig) }
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        let statsOutput = telemetry.openOutput()
        // The first line on a terminal (kvm-sandbox sets SVMM_CONSOLE_TERMINAL
        // when the terminal is on its side of the sandbox).
        if isatty(0) == 1 || getenv("SVMM_CONSOLE_TERMINAL") != nil { Messages.line(ConsoleEscape.help) }
        let output: ConsoleOutput, input: ConsoleInput
        do {
            output = try ConsoleOutput(fd: 1)
            input = try ConsoleInput(virtio: console == .virtio)
        } catch { fail("\(error)", .failure) }
        let machine = makeMachine(started: started, output: output, input: input)
        let session = telemetry.enabled
            ? TelemetrySession(options: telemetry, output: statsOutput, telemetry: machine.telemetry,
                               vmStats: machine.vmStats, devices: machine.deviceRanges)
            : nil
        session?.start()
        if bootTime {
            let how = switch (machine.entry.mode, machine.entry.decompressed) {
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
        let waitSet = stopSignals
        _ = try? startHostThread("signal handling", detached: true) {
            var set = waitSet, sig: Int32 = 0
            if sigwait(&set, &sig) == 0 { machine.stop(.interrupted(signal: sig)) }
        }

        let result = Result { try machine.run() }
        // Every byte the guest wrote reaches stdout before svmm says how it ended.
        output.close()
        Terminal.restore()
        let outcome: MachineExit
        do { outcome = try result.get() } catch { fail("\(error)", .failure) }
        session?.finish()
        if exitStats {
            Messages.line("svmm: " + StatsSummary.oneLine(machine.telemetry.map { $0.sample() }))
            for (i, d) in machine.disks.enumerated() {
                let c = d.counters
                Messages.line("svmm: disk \(i) \(d.disk.options.path): \(c.requests.load(ordering: .relaxed)) requests, "
                    + "\(c.flushes.load(ordering: .relaxed)) flushes synced, \(c.errors.load(ordering: .relaxed)) errors, "
                    + "\(c.unsupported.load(ordering: .relaxed)) unsupported")
            }
            for (i, n) in machine.nets.enumerated() {
                let pairs = n.counters.enumerated().map { p, c in
                    "pair \(p) rx \(c.rxPackets.load(ordering: .relaxed)) (\(c.rxBytes.load(ordering: .relaxed)) B, "
                        + "\(c.rxDropped.load(ordering: .relaxed)) dropped) tx \(c.txPackets.load(ordering: .relaxed)) "
                        + "(\(c.txBytes.load(ordering: .relaxed)) B, \(c.txDropped.load(ordering: .relaxed)) dropped) "
                        + "descriptors \(c.dataDescriptors.load(ordering: .relaxed))"
                }
                Messages.line("svmm: net \(i) \(machine.config.nets[i].tap.name): " + pairs.joined(separator: "; "))
            }
        }
        // Output flushed, stats written: the VM's teardown (the irqchip's, ~10 ms) need not delay the exit.
        detachTeardown()
        switch outcome {
        case .powerOff:
            return
        case .reset:
            Messages.line("svmm: the guest rebooted")
            throw ExitCode(ExitStatus.guestReboot.rawValue)
        case .panic:
            Messages.line("svmm: the guest kernel panicked (reported through pvpanic)")
            throw ExitCode(ExitStatus.guestPanic.rawValue)
        case let .tripleFault(cpu, rip):
            // On AMD, KVM reinitializes the vCPU on a shutdown intercept before
            // reporting it: a RIP at the reset vector says where it is now, not where it faulted.
            let reset = rip == 0xFFF0 ? " (the reset vector: KVM on AMD resets the vCPU before reporting a triple fault; where it faulted is lost)" : ""
            Messages.line("svmm: triple fault on vCPU \(cpu)\(rip.map { " at RIP 0x" + String($0, radix: 16) } ?? "")\(reset)")
            throw ExitCode(ExitStatus.tripleFault.rawValue)
        case .timeout:
            let rips = machine.stoppedAt.enumerated().map { cpu, state in
                state.map { "vCPU \(cpu) at RIP 0x\(String($0.rip, radix: 16)) (\($0.summary))" } ?? "vCPU \(cpu) at RIP ?"
            }
            Messages.line("svmm: timeout: the guest ran past \(timeout ?? "") (\(rips.joined(separator: "; ")))")
            throw ExitCode(ExitStatus.timeout.rawValue)
        case let .interrupted(sig):
            Messages.line("svmm: stopped by signal \(sig)")
            throw ExitCode(128 + sig)
        case .consoleEscape:
            Messages.line("svmm: stopped from the console (Ctrl-A x)")
            throw ExitCode(ExitStatus.consoleEscape.rawValue)
        case let .programExited(value):
            let status = DebugExit.status(value)
            Messages.line("svmm: the guest wrote 0x\(String(value, radix: 16)) to isa-debug-exit: exit status \(status)")
            throw ExitCode(status)
        case .halted:
            fail("the guest stopped in a way a Linux board does not produce: \(outcome)", .failure)
        case let .internalError(cpu, detail):
            Messages.line("svmm: KVM internal error on vCPU \(cpu): \(detail); if 'svmm probe' says this KVM is not usable, run through Scripts/kvm-sandbox")
            throw ExitCode(ExitStatus.kvmInternalError.rawValue)
        case let .hostError(detail):
            fail(detail, .failure)
        }
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
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        if let last = t.last, let unit = units[last] {
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
