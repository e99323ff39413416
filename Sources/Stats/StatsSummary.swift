/// The readable table of `--stats-summary` and `svmm stats FILE`: top exit
/// reasons with latency percentiles, top ports and MMIO addresses with their
/// devices, and KVM's own counters.
public enum StatsSummary {
    public static func render(header: StatsHeader, finals: [StatsRecord]) -> String {
        guard let all = finals.first(where: { $0.vcpu == "all" }) else { return "no final record: the run did not finish\n" }
        var out = ""
        let total = all.sections["exits"]?.values.reduce(0, +) ?? 0
        let seconds = Double(all.time) / 1e9
        out += "exit summary: \(header.vcpus) vCPU\(header.vcpus == 1 ? "" : "s"), \(format(seconds, 2)) s, \(total) exits to userspace"
        let guest = all["time", "guest_ns"], vmm = all["time", "vmm_ns"]
        if header.timing, guest + vmm > 0 {
            out += "; vCPU threads \(format(100 * Double(guest) / Double(guest + vmm), 1))% in the guest, \(format(100 * Double(vmm) / Double(guest + vmm), 1))% in svmm"
        }
        out += "\n"

        var rows: [[String]] = [["reason", "exits", "share", "p50", "p99", "max"]]
        for (name, count) in (all.sections["exits"] ?? [:]).filter({ $0.value > 0 }).sorted(by: { $0.value > $1.value }) {
            let share = total > 0 ? format(100 * Double(count) / Double(total), 1) + "%" : "-"
            let lat = { (p: String) -> String in
                let v = all.sections["latency_ns"]?["\(name):\(p)"]
                return v.map(duration) ?? "-"
            }
            rows.append([name, String(count), share, lat("p50"), lat("p99"), lat("max")])
        }
        out += table(rows)

        let ports = (all.sections["io"] ?? [:]).sorted { $0.value > $1.value }.prefix(10)
        if !ports.isEmpty {
            out += "top ports:\n"
            var r: [[String]] = [["port", "dir", "device", "exits"]]
            for (key, count) in ports {
                guard let k = PortKey(name: key) else { continue }
                r.append([hex(UInt64(k.port)), k.isWrite ? "out" : "in", header.device(bus: "io", address: UInt64(k.port)) ?? "-", String(count)])
            }
            out += table(r)
        }
        let mmio = (all.sections["mmio"] ?? [:]).sorted { $0.value > $1.value }.prefix(10)
        if !mmio.isEmpty {
            out += "top MMIO addresses:\n"
            var r: [[String]] = [["address", "device", "exits"]]
            for (key, count) in mmio {
                r.append([key, parseHex(key).flatMap { header.device(bus: "mmio", address: $0) } ?? "-", String(count)])
            }
            out += table(r)
        }
        if let kvm = all.sections["kvm"], !kvm.isEmpty {
            let names = ["exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits", "signal_exits",
                         "request_irq_exits", "insn_emulation", "pf_taken", "irq_injections", "halt_wakeup", "halt_successful_poll"]
            let shown = names.compactMap { n in kvm[n].map { "\(n) \($0)" } }
            out += "KVM (all exits, in-kernel included): " + shown.joined(separator: ", ") + "\n"
        }
        return out
    }

    static func table(_ rows: [[String]]) -> String {
        guard let first = rows.first else { return "" }
        let widths = (0..<first.count).map { c in rows.map { $0.count > c ? $0[c].count : 0 }.max() ?? 0 }
        // A column whose cells all start with a digit is right-aligned.
        let numeric = (0..<first.count).map { c in
            rows.dropFirst().allSatisfy { c < $0.count && $0[c].first?.isNumber == true }
        }
        return rows.map { row in
            "  " + row.enumerated().map { c, cell in
                numeric[c] ? cell.leftPadding(widths[c]) : cell.padding(widths[c])
            }.joined(separator: "  ") + "\n"
        }.joined()
    }

    /// "850 ns", "12.3 µs", "4.56 ms", "1.23 s"
    public static func duration(_ ns: UInt64) -> String {
        let d = Double(ns)
        if d < 1e3 { return "\(ns) ns" }
        if d < 1e6 { return format(d / 1e3, 1) + " µs" }
        if d < 1e9 { return format(d / 1e6, 2) + " ms" }
        return format(d / 1e9, 2) + " s"
    }

    static func format(_ v: Double, _ digits: Int) -> String {
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let r = (v * scale).rounded() / scale
        var s = String(r)
        if let dot = s.firstIndex(of: ".") {
            let decimals = s.distance(from: dot, to: s.endIndex) - 1
            if decimals < digits { s += String(repeating: "0", count: digits - decimals) }
            if digits == 0 { s = String(s[..<dot]) }
        }
        return s
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
    /// Right-aligned in `width` characters, padded with `fill`.
    public func leftPadding(_ width: Int, with fill: Character = " ") -> String {
        count >= width ? self : String(repeating: fill, count: width - count) + self
    }
}

extension StatsSummary {
    /// One line (`--exit-stats`): "590 exits to userspace: io 589 (0x3f8 165, …), mmio 1 (0xd0000000 1)".
    public static func oneLine(_ samples: [TelemetrySample]) -> String {
        var exits = [UInt64](repeating: 0, count: ExitReason.allCases.count)
        var ports: [UInt16: UInt64] = [:], mmio: [UInt64: UInt64] = [:]
        for s in samples {
            for i in exits.indices { exits[i] += s.exits[i] }
            for (k, v) in s.ports { ports[k.port, default: 0] += v }
            for (k, v) in s.mmio { mmio[k, default: 0] += v }
        }
        var parts: [String] = []
        for r in ExitReason.allCases where exits[r.rawValue] > 0 {
            var part = "\(r.name) \(exits[r.rawValue])"
            if r == .io {
                part += " (" + ports.sorted { $0.value > $1.value }.prefix(8).map { "\(hex(UInt64($0.key))) \($0.value)" }.joined(separator: ", ") + ")"
            } else if r == .mmio {
                part += " (" + mmio.sorted { $0.value > $1.value }.prefix(8).map { "\(hex($0.key)) \($0.value)" }.joined(separator: ", ") + ")"
            }
            parts.append(part)
        }
        return "\(exits.reduce(0, +)) exits to userspace: " + parts.joined(separator: ", ")
    }
}
