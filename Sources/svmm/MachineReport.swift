import ArgumentParser
import Glibc
import Machine
import Stats
import VMCore

/// How a run ended, said the same way by every command that runs a guest
/// (`boot`, `serve`): the exit statistics, then one line and svmm's status.
enum MachineReport {
    /// `--exit-stats`: exits by reason, port and address, each disk's and each interface's counters.
    static func exitStats(_ machine: LinuxMachine) {
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

    /// Returns for a power-off; otherwise says how the run ended and throws its exit status.
    static func outcome(_ outcome: MachineExit, machine: LinuxMachine, timeout: String) throws {
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
            Messages.line("svmm: timeout: the guest ran past \(timeout) (\(rips.joined(separator: "; ")))")
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

/// SIGINT, SIGTERM and SIGHUP, blocked in every thread (threads inherit the
/// mask) and taken by one thread with sigwait: no Dispatch worker threads
/// (8 MiB stacks) in the VMM.
enum StopSignals {
    /// Blocks them; call before any thread starts.
    static func block() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for sig in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, sig) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        return set
    }

    /// The thread that takes the first of them and hands it to `stop`.
    static func handle(_ set: sigset_t, _ stop: @escaping @Sendable (Int32) -> Void) {
        _ = try? startHostThread("signal handling", detached: true) {
            var set = set, sig: Int32 = 0
            if sigwait(&set, &sig) == 0 { stop(sig) }
        }
    }
}
