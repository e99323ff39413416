import Stats
import VMCore
import ArgumentParser
import KVM
import Machine
import Glibc

struct RunFirmware: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firmware",
        abstract: "Run a flat 64-bit test program from Firmware/ and time it.",
        discussion: """
            The program is entered in long mode at 0x100000 with rdi = --arg.
            Prints one line: outcome, exits to userspace, wall time and time per
            iteration (wall time / --arg). Status: 0 when the program exits 0.

            Examples:
              svmm firmware loop --arg 1000000      # guest instruction speed
              svmm firmware outloop --arg 100000    # cost of one port-I/O exit
              svmm firmware mmioread --arg 1000 --stats-summary
              svmm firmware hltloop --arg 1000 --irqchip   # needs interrupt delivery
            """
    )

    @Argument(help: "A name in Firmware/build (probe, loop, outloop, inloop, mmiowrite, mmioread, cpuidloop, msrloop, hltloop, mixed) or a path.")
    var program: String

    @Option(help: "Value passed in rdi (the loop count for loop and outloop).")
    var arg: UInt64 = 0

    @Option(help: "Seconds before the program is stopped.")
    var timeout: Double = 60

    @Option(help: "Path of the KVM device.")
    var device: String = "/dev/kvm"

    @Flag(help: "Give the VM an in-kernel irqchip (local APIC), for programs that take interrupts (hltloop).")
    var irqchip = false

    @OptionGroup(title: "Exit telemetry")
    var telemetry: TelemetryOptions

    /// Starts and ends the telemetry session around the program's run.
    final class Observer: FirmwareRunner.Observer {
        let options: TelemetryOptions
        let output: Int32?
        var session: TelemetrySession?
        init(options: TelemetryOptions, output: Int32?) {
            self.options = options
            self.output = output
        }
        func started(telemetry: [VCPUTelemetry], vmStats: KVMStats?, devices: [DeviceRange]) {
            session = TelemetrySession(options: options, output: output, telemetry: telemetry, vmStats: vmStats, devices: devices)
            session?.start()
        }
        func finished() { session?.finish() }
    }

    func run() throws {
        let image = FirmwareLocation.load(program)
        let result: FirmwareRunner.Result
        let observer = telemetry.enabled ? Observer(options: telemetry, output: telemetry.openOutput()) : nil
        do {
            let runner = FirmwareRunner(timeoutSeconds: timeout, telemetry: telemetry.enabled, irqchip: irqchip)
            result = try runner.run(image: image, argument: arg, kvmPath: device, observer: observer)
        } catch {
            fail("\(error)", .kvmUnavailable)
        }
        if !result.console.isEmpty { writeStdout(result.console) }
        let perIteration = arg > 0 ? Double(result.nanoseconds) / Double(arg) : 0
        writeStdout(Array("outcome=\(result.outcome) exits=\(result.exits) ns=\(result.nanoseconds) ns_per_iteration=\((perIteration * 100).rounded() / 100) reports=\(result.reports)\n".utf8))
        let status: ExitStatus = switch result.outcome {
        case .exited(status: 0): .success
        case .exited: .guestFailed
        case .timedOut: .timeout
        default: .kvmInternalError
        }
        // Everything is written: exit while the machine is still referenced,
        // so that its VM's teardown is the helper's (detachTeardown), not ours.
        withExtendedLifetime(result) {
            detachTeardown()
            Glibc.exit(status.rawValue)
        }
    }
}
