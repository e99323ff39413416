
/// The records of a stats file: schema `svmm-stats`, version 1. Documented
/// in docs/telemetry.md; a change to the shape bumps `version`.
public enum StatsSchema {
    public static let name = "svmm-stats"
    public static let version: UInt64 = 1
    /// The CSV's columns, in order.
    public static let csvColumns = ["record", "seq", "t_ns", "dt_ns", "vcpu", "metric", "key", "value"]
}

public enum StatsFormat: String, CaseIterable, Sendable {
    case jsonl, csv
}

/// A device's address range on a bus, for attributing exits to devices.
public struct DeviceRange: Sendable, Equatable {
    public var bus: String          // "io" or "mmio"
    public var first: UInt64
    public var last: UInt64
    public var name: String
    public init(bus: String, first: UInt64, last: UInt64, name: String) {
        self.bus = bus
        self.first = first
        self.last = last
        self.name = name
    }
    var key: String { "\(bus):0x\(String(first, radix: 16))-0x\(String(last, radix: 16))" }
}

/// How KVM describes one statistic (kept in the header so a file explains itself).
public struct StatInfo: Sendable, Equatable {
    public var name: String
    public var kind: String
    public var unit: String
    public var exponent: Int
    public var size: Int
    public init(name: String, kind: String, unit: String, exponent: Int, size: Int) {
        self.name = name
        self.kind = kind
        self.unit = unit
        self.exponent = exponent
        self.size = size
    }
    var key: String { "\(name);\(kind);\(unit);\(exponent);\(size)" }
}

/// The first record of a file.
public struct StatsHeader: Sendable, Equatable {
    public var version = StatsSchema.version
    public var intervalNanoseconds: UInt64 = 0
    public var vcpus = 0
    /// Wall-clock time of t_ns = 0 (Unix epoch, ns).
    public var startUnixNanoseconds: UInt64 = 0
    /// Whether latency and guest/svmm time were measured.
    public var timing = true
    public var devices: [DeviceRange] = []
    public var kvmVMStats: [StatInfo] = []
    public var kvmVCPUStats: [StatInfo] = []
    public init() {}

    public func device(bus: String, address: UInt64) -> String? {
        devices.first { $0.bus == bus && address >= $0.first && address <= $0.last }?.name
    }
}

/// An interval or final record: sections of named counters.
///
/// Sections: `exits` (by reason), `io` ("0x3f8:out"), `mmio` ("0xd0000000"),
/// `time` (`guest_ns`, `vmm_ns`), `kvm` (KVM's statistics, by name),
/// `latency_ns` (final records: "io:p50", "io:max", … per reason).
public struct StatsRecord: Sendable, Equatable {
    public enum Kind: String, Sendable { case interval, final }
    public var kind: Kind
    public var seq = 0
    public var time: UInt64 = 0
    public var duration: UInt64 = 0
    /// The last interval, cut short by the end of the run.
    public var partial = false
    /// "0", "1", … for a vCPU; "vm" for the VM's own KVM statistics; "all"
    /// for the sum over vCPUs (final records only).
    public var vcpu: String
    public var sections: [String: [String: UInt64]] = [:]
    public static let sectionOrder = ["exits", "io", "mmio", "time", "kvm", "latency_ns"]

    public init(kind: Kind, vcpu: String) {
        self.kind = kind
        self.vcpu = vcpu
    }

    public subscript(section: String, key: String) -> UInt64 {
        get { sections[section]?[key] ?? 0 }
        set { sections[section, default: [:]][key] = newValue }
    }
}

// MARK: Writing

extension StatsHeader {
    var csvRows: [[String]] {
        var rows: [[String]] = [
            ["header", "0", "0", "0", "", "schema", StatsSchema.name, String(version)],
            ["header", "0", "0", "0", "", "interval_ns", "", String(intervalNanoseconds)],
            ["header", "0", "0", "0", "", "vcpus", "", String(vcpus)],
            ["header", "0", "0", "0", "", "start_unix_ns", "", String(startUnixNanoseconds)],
            ["header", "0", "0", "0", "", "timing", "", timing ? "1" : "0"],
        ]
        rows += devices.map { ["header", "0", "0", "0", "", "device", "\($0.key) \($0.name)", "0"] }
        rows += kvmVMStats.map { ["header", "0", "0", "0", "vm", "kvm_stat", $0.key, "0"] }
        rows += kvmVCPUStats.map { ["header", "0", "0", "0", "vcpu", "kvm_stat", $0.key, "0"] }
        return rows
    }
}

extension StatsRecord {
    var csvRows: [[String]] {
        var rows: [[String]] = []
        let prefix = [kind.rawValue, String(seq), String(time), String(duration), vcpu]
        for name in Self.sectionOrder {
            guard let section = sections[name] else { continue }
            for (k, v) in section.sorted(by: { $0.key < $1.key }) { rows.append(prefix + [name, k, String(v)]) }
        }
        if kind == .interval && rows.isEmpty { rows.append(prefix + ["exits", "", "0"]) }
        return rows
    }
}

public func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

func csvField(_ s: String) -> String {
    s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + s.escaping(["\"": "\"\""]) + "\"" : s
}

extension String {
    /// Each character found in `table` replaced by its entry (the escaping
    /// of CSV fields, Prometheus label values and XML text).
    public func escaping(_ table: [Character: String]) -> String {
        var out = ""
        for c in self { if let r = table[c] { out += r } else { out.append(c) } }
        return out
    }
}

/// Text of a stats file, line by line.
public enum StatsEncoder {
    public static func header(_ h: StatsHeader, format: StatsFormat) -> String {
        switch format {
        case .jsonl: return StatsJSON.line(h)
        case .csv: return StatsSchema.csvColumns.joined(separator: ",") + "\n" + rows(h.csvRows)
        }
    }

    public static func records(_ records: [StatsRecord], format: StatsFormat) -> String {
        switch format {
        case .jsonl: return records.map(StatsJSON.line).joined()
        case .csv: return rows(records.flatMap(\.csvRows))
        }
    }

    static func rows(_ rows: [[String]]) -> String {
        rows.map { $0.map(csvField).joined(separator: ",") + "\n" }.joined()
    }
}

// MARK: Reading

public struct StatsFileError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// A stats file read back: what `svmm stats` summarizes and plots.
public struct StatsFile: Sendable {
    public var header: StatsHeader
    public var intervals: [StatsRecord]
    public var finals: [StatsRecord]

    public init(header: StatsHeader, intervals: [StatsRecord], finals: [StatsRecord]) {
        self.header = header
        self.intervals = intervals
        self.finals = finals
    }

    /// Reads JSONL or CSV (told apart by the first character).
    public static func parse(_ text: String) throws(StatsFileError) -> StatsFile {
        let trimmed = text.drop { $0 == " " || $0 == "\n" }
        if trimmed.first == "{" { return try parseJSONL(text) }
        if trimmed.hasPrefix(StatsSchema.csvColumns.joined(separator: ",")) { return try parseCSV(text) }
        throw StatsFileError(description: "not an svmm stats file (neither JSONL nor CSV with the svmm-stats columns)")
    }

    static func parseJSONL(_ text: String) throws(StatsFileError) -> StatsFile {
        var header: StatsHeader?
        var intervals: [StatsRecord] = [], finals: [StatsRecord] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            switch try StatsJSON.read(line, lineNumber: n + 1) {
            case let .header(h): header = h
            case let .record(r): if r.kind == .final { finals.append(r) } else { intervals.append(r) }
            }
        }
        guard let header else { throw StatsFileError(description: "no header record") }
        return StatsFile(header: header, intervals: intervals, finals: finals)
    }

    static func parseCSV(_ text: String) throws(StatsFileError) -> StatsFile {
        var header = StatsHeader()
        var sawSchema = false
        var records: [StatsRecord] = []
        var index: [String: Int] = [:]
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated().dropFirst() {
            let f = splitCSV(String(line))
            guard f.count == StatsSchema.csvColumns.count else { throw StatsFileError(description: "line \(n + 1): \(f.count) fields, not \(StatsSchema.csvColumns.count)") }
            let value = UInt64(f[7]) ?? 0
            if f[0] == "header" {
                switch f[5] {
                case "schema":
                    guard f[6] == StatsSchema.name, value == StatsSchema.version else { throw StatsFileError(description: "schema \(f[6]) version \(value) is not \(StatsSchema.name) \(StatsSchema.version)") }
                    sawSchema = true
                case "interval_ns": header.intervalNanoseconds = value
                case "vcpus": header.vcpus = Int(value)
                case "start_unix_ns": header.startUnixNanoseconds = value
                case "timing": header.timing = value != 0
                case "device":
                    // "io:0x3f8-0x3ff Serial16550"
                    let parts = f[6].split(separator: " ", maxSplits: 1)
                    let bus = parts[0].split(separator: ":")
                    let range = bus.count == 2 ? bus[1].split(separator: "-") : []
                    if parts.count == 2, range.count == 2, let a = parseHex(String(range[0])), let b = parseHex(String(range[1])) {
                        header.devices.append(DeviceRange(bus: String(bus[0]), first: a, last: b, name: String(parts[1])))
                    }
                case "kvm_stat":
                    let p = f[6].split(separator: ";", omittingEmptySubsequences: false).map(String.init)
                    if p.count == 5 {
                        let info = StatInfo(name: p[0], kind: p[1], unit: p[2], exponent: Int(p[3]) ?? 0, size: Int(p[4]) ?? 1)
                        if f[4] == "vm" { header.kvmVMStats.append(info) } else { header.kvmVCPUStats.append(info) }
                    }
                default: break
                }
                continue
            }
            guard let kind = StatsRecord.Kind(rawValue: f[0]) else { throw StatsFileError(description: "line \(n + 1): unknown record kind \(f[0])") }
            let id = "\(f[0])|\(f[1])|\(f[4])"
            if index[id] == nil {
                var r = StatsRecord(kind: kind, vcpu: f[4])
                r.seq = Int(f[1]) ?? 0
                r.time = UInt64(f[2]) ?? 0
                r.duration = UInt64(f[3]) ?? 0
                index[id] = records.count
                records.append(r)
            }
            if !f[6].isEmpty { records[index[id]!][f[5], f[6]] = value }
        }
        guard sawSchema else { throw StatsFileError(description: "no schema header row") }
        // The partial flag is not a CSV column: the last interval of a run is partial.
        var intervals = records.filter { $0.kind == .interval }
        if let last = intervals.map(\.seq).max() {
            for i in intervals.indices where intervals[i].seq == last { intervals[i].partial = true }
        }
        return StatsFile(header: header, intervals: intervals, finals: records.filter { $0.kind == .final })
    }

    static func splitCSV(_ line: String) -> [String] {
        var fields: [String] = [], current = "", quoted = false
        var chars = line.makeIterator()
        while let c = chars.next() {
            if quoted {
                if c == "\"" {
                    if let next = chars.next() {
                        if next == "\"" { current.append("\"") } else { quoted = false; if next == "," { fields.append(current); current = "" } else { current.append(next) } }
                    } else { quoted = false }
                } else { current.append(c) }
            } else if c == "\"" { quoted = true } else if c == "," { fields.append(current); current = "" } else { current.append(c) }
        }
        fields.append(current)
        return fields
    }
}

func parseHex(_ s: String) -> UInt64? {
    s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : nil
}
