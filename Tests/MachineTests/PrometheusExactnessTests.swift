import Foundation
import Testing
import KVM
@testable import Machine
@testable import Stats

/// Item 7's exactness in the Prometheus output: the allports firmware guest
/// (one exit for each of the 131,072 port/direction pairs, reads of 100
/// distinct MMIO addresses) run in this process, its counters rendered as
/// the endpoint renders them, and the per-port and per-address series
/// summed against the per-reason totals.
@Suite(.enabled(if: kvmPresent, "needs a readable and writable /dev/kvm; without one these KVM tests cannot run here"))
struct PrometheusExactnessTests {
    static let firmware = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Firmware/build/allports.bin")

    final class Capture: FirmwareRunner.Observer, @unchecked Sendable {
        // SAFETY (@unchecked Sendable): set once by `started`, on the thread that calls run, read after it.
        var telemetry: [VCPUTelemetry] = []
        var devices: [DeviceRange] = []
        func started(telemetry: [VCPUTelemetry], vmStats: KVMStats?, devices: [DeviceRange]) {
            self.telemetry = telemetry
            self.devices = devices
        }
        func finished() {}
    }

    /// (labels, value) of every sample of `family` in a text exposition.
    static func samples(_ text: String, _ family: String) -> [([String: String], UInt64)] {
        text.split(separator: "\n").compactMap { line in
            guard line.hasPrefix(family + "{"), let close = line.lastIndex(of: "}") else { return nil }
            var labels: [String: String] = [:]
            for pair in line[line.index(after: line.firstIndex(of: "{")!)..<close].split(separator: ",") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                labels[String(kv[0])] = String(kv[1].dropFirst().dropLast())
            }
            return (labels, UInt64(line[line.index(after: close)...].trimmingCharacters(in: .whitespaces))!)
        }
    }

    @Test func perPortAndPerAddressSeriesAddUpToTheExitTotals() throws {
        let image = try #require(FileManager.default.contents(atPath: Self.firmware.path), "build the firmware first (Scripts/setup)")
        let capture = Capture()
        let result = try FirmwareRunner(timeoutSeconds: 300, telemetry: true).run(image: Array(image), observer: capture)
        #expect(result.outcome == .exited(status: 0))
        let recorder = StatsRecorder(telemetry: capture.telemetry, vmStats: nil, devices: capture.devices,
                                     intervalNanoseconds: 0, output: nil, format: .jsonl)
        let live = recorder.live()
        let text = PrometheusText.render(header: recorder.header, vcpus: live.vcpus, vm: live.vm, vcpuStats: nil, vmStats: nil)

        let totals = Dictionary(uniqueKeysWithValues: Self.samples(text, "svmm_vcpu_exits_total").map { ($0.0["reason"]!, $0.1) })
        let io = Self.samples(text, "svmm_vcpu_io_exits_total")
        let mmio = Self.samples(text, "svmm_vcpu_mmio_exits_total")
        #expect(totals["io"] == 131_072)
        #expect(io.count == 131_072, "\(io.count) port/direction series")
        #expect(io.allSatisfy { $0.1 == 1 }, "series other than 1: \(io.filter { $0.1 != 1 }.prefix(5))")
        #expect(io.map(\.1).reduce(0, +) == totals["io"])
        #expect(Set(io.map { "\($0.0["port"]!):\($0.0["direction"]!)" }).isSuperset(of: ["0xffff:out", "0x8000:in", "0x0:out"]))
        #expect(totals["mmio"] == 100)
        #expect(mmio.map(\.1).reduce(0, +) == totals["mmio"], "the address series (with 'other') add up: \(mmio.count) series")
    }
}
