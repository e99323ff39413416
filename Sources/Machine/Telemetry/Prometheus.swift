import Glibc
import VMCore
import KVM
import Stats

/// The live counters in the Prometheus text exposition format (version
/// 0.0.4): svmm's own exit counters per vCPU and every KVM statistic of the
/// VM and its vCPUs. Counters end in `_total`, times are in seconds, labels
/// name the vCPU, exit reason, port, direction, address and device.
public enum PrometheusText {
    public static func render(header: StatsHeader, vcpus: [TelemetrySample], vm: [UInt64],
                              vcpuStats: KVMStats?, vmStats: KVMStats?) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: [(String, String)], _ value: String) {
            out += line(name, labels, value)
        }

        family("svmm_vcpus", "gauge", "Number of vCPUs of the running guest.")
        sample("svmm_vcpus", [], String(vcpus.count))

        family("svmm_vcpu_exits_total", "counter", "Exits to userspace (KVM_RUN returns) by exit reason.")
        for s in vcpus {
            for r in ExitReason.allCases { sample("svmm_vcpu_exits_total", [("vcpu", String(s.vcpu)), ("reason", r.name)], String(s.exits[r.rawValue])) }
        }
        family("svmm_vcpu_io_exits_total", "counter", "Port I/O exits to userspace by port and direction.")
        for s in vcpus {
            for (key, count) in s.ports.sorted(by: { $0.key < $1.key }) {
                sample("svmm_vcpu_io_exits_total", [("vcpu", String(s.vcpu)), ("port", hex(UInt64(key.port))),
                                                    ("direction", key.isWrite ? "out" : "in"),
                                                    ("device", header.device(bus: "io", address: UInt64(key.port)) ?? "none")], String(count))
            }
        }
        family("svmm_vcpu_mmio_exits_total", "counter", "MMIO exits to userspace by guest-physical address.")
        for s in vcpus {
            for (address, count) in s.mmio.sorted(by: { $0.key < $1.key }) {
                sample("svmm_vcpu_mmio_exits_total", [("vcpu", String(s.vcpu)), ("address", hex(address)),
                                                      ("device", header.device(bus: "mmio", address: address) ?? "none")], String(count))
            }
            if s.mmioOverflow > 0 {
                sample("svmm_vcpu_mmio_exits_total", [("vcpu", String(s.vcpu)), ("address", "other"), ("device", "none")], String(s.mmioOverflow))
            }
        }
        if header.timing {
            family("svmm_vcpu_guest_seconds_total", "counter", "Time spent inside KVM_RUN.")
            for s in vcpus { sample("svmm_vcpu_guest_seconds_total", [("vcpu", String(s.vcpu))], seconds(s.guestNanoseconds)) }
            family("svmm_vcpu_vmm_seconds_total", "counter", "Time spent in svmm handling exits (from KVM_RUN's return to the next entry).")
            for s in vcpus { sample("svmm_vcpu_vmm_seconds_total", [("vcpu", String(s.vcpu))], seconds(s.vmmNanoseconds)) }
        }
        if let vcpuStats {
            kvmFamilies(prefix: "kvm_vcpu_", stats: vcpuStats, series: vcpus.map { ([("vcpu", String($0.vcpu))], $0.kvm) }, into: &out)
        }
        if let vmStats {
            kvmFamilies(prefix: "kvm_vm_", stats: vmStats, series: [([], vm)], into: &out)
        }
        return out
    }

    /// One family per single-value KVM statistic: cumulative ones as
    /// counters, instant and peak ones as gauges; nanosecond values in
    /// seconds. (KVM's own histograms are in the stats file, not here.)
    static func kvmFamilies(prefix: String, stats: KVMStats, series: [([(String, String)], [UInt64])], into out: inout String) {
        for d in stats.descriptors where d.size == 1 && d.kind != .linearHistogram && d.kind != .logHistogram {
            var base = prefix + sanitize(d.name)
            var scale = 1.0
            if d.unit == .seconds {
                for suffix in ["_ns", "_us", "_ms"] where base.hasSuffix(suffix) { base.removeLast(suffix.count) }
                base += "_seconds"
                scale = d.base == 2 ? pow(2, Double(d.exponent)) : pow(10, Double(d.exponent))
            } else if d.unit == .bytes {
                base += "_bytes"
            }
            let isCounter = d.kind == .cumulative
            let name = isCounter ? base + "_total" : base
            out += "# HELP \(name) KVM statistic \(d.name) (\(d.kind.rawValue), unit \(d.unit.rawValue)).\n"
            out += "# TYPE \(name) \(isCounter ? "counter" : "gauge")\n"
            for (labels, values) in series where d.index < values.count {
                let v = values[d.index]
                out += line(name, labels, scale == 1 ? String(v) : "\(Double(v) * scale)")
            }
        }
    }

    static func seconds(_ ns: UInt64) -> String { "\(Double(ns) / 1e9)" }

    static func sanitize(_ s: String) -> String {
        String(s.map { $0.isLetter || $0.isNumber || $0 == "_" ? $0 : "_" })
    }

    /// One sample line: `name{label="value",…} value`.
    static func line(_ name: String, _ labels: [(String, String)], _ value: String) -> String {
        var out = name
        if !labels.isEmpty {
            out += "{" + labels.map { "\($0.0)=\"\($0.1.escaping(["\\": "\\\\", "\"": "\\\"", "\n": "\\n"]))\"" }.joined(separator: ",") + "}"
        }
        return out + " \(value)\n"
    }
}

