import KVM
import Machine
import VMCore

/// What to build, whoever asked: `svmm boot`'s options or the API's
/// configuration (`svmm serve`).
struct MachineRequest {
    var kernelPath: String
    /// Added to the "cannot read kernel" line (the default kernel's hint).
    var kernelHint = ""
    var initrdPath: String?
    /// nil: the default for the kernel and console (none for Multiboot).
    var commandLine: String?
    var extraCommandLine = ""
    var cpus = 1
    var memoryBytes: UInt64 = 512 << 20
    var timeoutSeconds: Double?
    var bootProtocol: BootProtocol = .auto
    var console: ConsoleDevice = .serial
    var entropy = true
    var pit = false
    var testDevices = false
    /// The i8042 with a keyboard (Ctrl-Alt-Del from the API).
    var keyboard = false
    var cpuFeatures: [CPUFeatures.Change] = []
    var disks: [DiskImage.Options] = []
    var nets: [NetSpec.Options] = []
    /// Exit timing and KVM's statistics (the telemetry options).
    var telemetry = false
    var reportBootTime = false
    var kvmPath = "/dev/kvm"
    /// Record written pages for Diff snapshots.
    var trackDirtyPages = false
    /// Build the machine to restore a snapshot into: no kernel is read or loaded.
    var restoring = false
}

/// Why a machine was not built: the one line, and svmm's exit status for it.
struct StartFailure: Error, Sendable {
    let message: String
    let status: ExitStatus
}

extension MachineRequest {
    /// Opens the files and TAPs and builds the machine; the kernel and initrd
    /// are read straight into guest RAM. Nothing runs yet.
    func build(started: UInt64, output: ConsoleOutput, input: ConsoleInput) throws(StartFailure) -> LinuxMachine {
        let kernelImage: ImageSource
        if restoring {
            kernelImage = ImageSource([], path: "(snapshot)")
        } else {
            do { kernelImage = try ImageSource(path: kernelPath) } catch {
                throw StartFailure(message: "cannot read kernel \(kernelPath): \(error.reason)\(kernelHint)", status: .noInput)
            }
        }
        let multiboot = !restoring && MultibootKernel.isMultiboot(kernelImage)
        var initrdImage: ImageSource?
        if let initrdPath {
            do { initrdImage = try ImageSource(path: initrdPath) } catch {
                throw StartFailure(message: "cannot read initrd \(initrdPath): \(error.reason)", status: .noInput)
            }
        }
        let defaultLine = multiboot ? "" : console == .virtio ? BootConfiguration.virtioConsoleCommandLine : BootConfiguration.defaultCommandLine
        var config = BootConfiguration(
            kernel: kernelImage, initrd: initrdImage, commandLine: (commandLine ?? defaultLine) + extraCommandLine,
            cpus: cpus, memoryBytes: memoryBytes, timeoutSeconds: timeoutSeconds)
        config.startTime = started
        config.exitTiming = telemetry
        config.kvmStatistics = telemetry
        config.bootProtocol = bootProtocol
        config.console = console
        config.entropy = entropy
        config.pit = pit
        config.testDevices = testDevices
        config.keyboard = keyboard
        config.cpuFeatures = cpuFeatures
        config.trackDirtyPages = trackDirtyPages
        for options in disks {
            do { config.disks.append(try DiskImage(options)) } catch {
                if case .locked = error.problem { throw StartFailure(message: error.message, status: .inUse) }
                throw StartFailure(message: error.message, status: .noInput)
            }
        }
        for options in nets { config.nets.append(try Self.openNet(options, cpus: cpus)) }
        let reportBootTime = reportBootTime
        do {
            return try LinuxMachine(config: config, kvmPath: kvmPath, consoleOutput: { byte in
                output.append(byte)
            }, virtioConsoleOutput: { bytes in
                output.append(bytes)
            }, consoleInput: input.virtioInput, onBootMarker: { ns in
                if reportBootTime { Messages.line("svmm: boot marker reached after \(ns / 1_000_000) ms") }
            }, restoring: restoring)
        } catch let e as LoaderError {
            throw StartFailure(message: e.message, status: .badInput)
        } catch let e as KVMUnavailable {
            throw StartFailure(message: e.description, status: .kvmUnavailable)
        } catch let e as CPUFeatureError {
            throw StartFailure(message: e.message, status: .usage)
        } catch {
            throw StartFailure(message: "\(error)", status: .failure)
        }
    }

    /// Attaches a TAP: multi-queue where it can, vhost-net where asked and
    /// there (one line when not).
    static func openNet(_ options: NetSpec.Options, cpus: Int) throws(StartFailure) -> NetInterface {
        let wanted = options.queues ?? min(cpus, NetSpec.maxQueues)
        let tap: Tap
        do throws(TapError) { tap = try Tap(name: options.tap, queues: wanted) } catch {
            let status: ExitStatus = switch error.problem {
            case .missing, .notATap: .noSuchTap
            case .busy: .inUse
            case .permission: .noPermission
            case .other: .failure
            }
            throw StartFailure(message: error.message, status: status)
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
}
