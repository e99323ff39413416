import Stats
import VMCore
import ArgumentParser
import KVM
import Machine

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Check whether this host's KVM can run a real guest.",
        discussion: """
            Runs a tiny 64-bit guest that must take two exceptions through its IDT.
            Exit status: 0 usable, 3 KVM present but cannot run a real guest
            (e.g. software/paravirtual KVM), 69 /dev/kvm missing or not accessible.

            Example: svmm probe && echo "hardware KVM"
            """
    )

    @Option(help: "The probe guest (default: Firmware/build/probe.bin).")
    var firmware: String = "probe"

    @Option(help: "Path of the KVM device.")
    var device: String = "/dev/kvm"

    @Option(help: "Seconds before the probe guest counts as hung.")
    var timeout: Double = 5

    @Flag(help: "Print nothing when usable.")
    var quiet = false

    func run() throws {
        let image = FirmwareLocation.load(firmware)
        let result: FirmwareRunner.Result
        do {
            result = try FirmwareRunner(timeoutSeconds: timeout).run(image: image, kvmPath: device)
        } catch let e as KVMUnavailable {
            fail("KVM not usable: \(e)", .kvmUnavailable)
        } catch {
            fail("KVM not usable: \(error)", .kvmUnavailable)
        }
        switch KVMProbe.judge(result) {
        case .usable:
            if !quiet { Messages.line("svmm: KVM usable: \(device) delivered #BP and #UD to a 64-bit guest (vectors \(result.reports))") }
        case let .notUsable(reason):
            Messages.line("svmm: KVM not usable for real guests: \(reason)")
            throw ExitCode(ExitStatus.kvmNotUsable.rawValue)
        }
    }
}
