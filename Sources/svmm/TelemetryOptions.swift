import Stats
import VMCore
import ArgumentParser
import Glibc
import KVM
import Machine

/// The exit-telemetry options shared by `svmm boot` and `svmm firmware`.
struct TelemetryOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Record exit telemetry to FILE: per-interval deltas per vCPU, then totals and latency percentiles (docs/telemetry.md).", valueName: "FILE"))
    var stats: String?

    @Option(help: "Interval between --stats records, e.g. 100ms, 1s.")
    var statsInterval: String = "100ms"

    @Option(help: "Format of the --stats file: jsonl or csv.")
    var statsFormat: StatsFormat = .jsonl

    @Flag(help: "Print a table of exits (reasons, ports, MMIO addresses, latency percentiles, KVM's counters) on stderr at exit.")
    var statsSummary = false

    @Option(help: ArgumentHelp("Serve live counters in the Prometheus text format on the Unix socket PATH.", valueName: "PATH"))
    var statsListen: String?

    func validate() throws {
        guard let s = Sizes.seconds(statsInterval), s >= 0.001 else {
            throw ValidationError("--stats-interval '\(statsInterval)' is not a duration of 1ms or more (e.g. 100ms, 1s)")
        }
    }

    /// Whether anything beyond the plain counts was asked for: then exits are
    /// timed and KVM's statistics are opened.
    var enabled: Bool { stats != nil || statsSummary || statsListen != nil }

    var intervalNanoseconds: UInt64 { UInt64((Sizes.seconds(statsInterval) ?? 0.1) * 1e9) }

    /// Opens the stats file before anything runs, so a bad path fails early
    /// (exit 73) and loses nothing else.
    func openOutput() -> Int32? {
        guard let stats else { return nil }
        let fd = open(stats, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { fail("cannot create --stats file \(stats): \(String(cString: strerror(errno)))", .cannotCreate) }
        return fd
    }
}

/// Telemetry of one run: the recorder, the live endpoint and the summary.
final class TelemetrySession {
    let options: TelemetryOptions
    let recorder: StatsRecorder
    let endpoint: PrometheusEndpoint?

    init(options: TelemetryOptions, output: Int32?, telemetry: [VCPUTelemetry], vmStats: KVMStats?, devices: [DeviceRange]) {
        self.options = options
        recorder = StatsRecorder(telemetry: telemetry, vmStats: vmStats, devices: devices,
                                 intervalNanoseconds: options.intervalNanoseconds, output: output, format: options.statsFormat)
        if let path = options.statsListen {
            let recorder = recorder
            let vcpuStats = telemetry.first?.kvmStats
            do {
                endpoint = try PrometheusEndpoint(path: path) {
                    let live = recorder.live()
                    return PrometheusText.render(header: recorder.header, vcpus: live.vcpus, vm: live.vm, vcpuStats: vcpuStats, vmStats: vmStats)
                }
            } catch {
                fail(error.description, .cannotCreate)
            }
        } else {
            endpoint = nil
        }
    }

    func start() {
        do {
            try recorder.start()
            try endpoint?.start()
        } catch {
            fail("\(error)", .failure)
        }
    }

    /// After the vCPU threads were joined: final records, summary, cleanup.
    func finish() {
        endpoint?.stop()
        let finals = recorder.finish()
        if recorder.writeError != 0, let path = options.stats {
            Messages.line("svmm: warning: writing --stats file \(path) failed: \(String(cString: strerror(recorder.writeError)))")
        }
        if options.statsSummary {
            Messages.block(StatsSummary.render(header: recorder.header, finals: finals))
        }
    }
}

extension StatsFormat: ExpressibleByArgument {}
