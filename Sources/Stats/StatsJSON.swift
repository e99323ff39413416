import FoundationEssentials

/// The JSONL form of a stats file (schema `svmm-stats`, docs/telemetry.md),
/// through the toolchain's JSON coders: one object per line, members in
/// sorted order, counters as exact unsigned integers.
enum StatsJSON {
    enum Line {
        case header(StatsHeader)
        case record(StatsRecord)
    }

    static func line<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Every value here encodes (strings, integers, booleans, arrays of them).
        return String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self) + "\n"
    }

    /// One line of a JSONL file: a header or a record, or a one-line error naming the line.
    static func read(_ text: Substring, lineNumber n: Int) throws(StatsFileError) -> Line {
        let data = Data(text.utf8)
        let kind: String?
        do { kind = try JSONDecoder().decode(Kind.self, from: data).record } catch {
            throw StatsFileError(description: "line \(n): not valid JSON")
        }
        do {
            switch kind {
            case "header":
                let h = try JSONDecoder().decode(HeaderLine.self, from: data)
                guard h.schema == StatsSchema.name else { throw StatsFileError(description: "line \(n): schema is not \(StatsSchema.name)") }
                guard h.header.version == StatsSchema.version else {
                    throw StatsFileError(description: "schema version \(h.header.version) is not \(StatsSchema.version)")
                }
                return .header(h.header)
            case "interval", "final":
                return .record(try JSONDecoder().decode(StatsRecord.self, from: data))
            default:
                throw StatsFileError(description: "line \(n): unknown record kind")
            }
        } catch let e as StatsFileError {
            throw e
        } catch {
            throw StatsFileError(description: "line \(n): not a valid \(kind ?? "") record")
        }
    }

    struct Kind: Decodable { let record: String? }

    /// A header as read: the schema name is checked by the reader.
    struct HeaderLine: Decodable {
        let schema: String?
        let header: StatsHeader
        enum CodingKeys: String, CodingKey { case schema }
        init(from decoder: Decoder) throws {
            schema = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(String.self, forKey: .schema)
            header = try StatsHeader(from: decoder)
        }
    }
}

/// A counter section's member names, known only when read.
struct SectionKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension StatsHeader: Codable {
    enum CodingKeys: String, CodingKey {
        case record, schema, version, interval_ns, vcpus, start_unix_ns, timing, exit_reasons, devices, kvm_vm_stats, kvm_vcpu_stats
    }

    struct Device: Codable {
        let bus: String, first: String, last: String, name: String
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode("header", forKey: .record)
        try c.encode(StatsSchema.name, forKey: .schema)
        try c.encode(version, forKey: .version)
        try c.encode(intervalNanoseconds, forKey: .interval_ns)
        try c.encode(vcpus, forKey: .vcpus)
        try c.encode(startUnixNanoseconds, forKey: .start_unix_ns)
        try c.encode(timing, forKey: .timing)
        try c.encode(ExitReason.allCases.map(\.name), forKey: .exit_reasons)
        try c.encode(devices.map { Device(bus: $0.bus, first: hex($0.first), last: hex($0.last), name: $0.name) }, forKey: .devices)
        try c.encode(kvmVMStats, forKey: .kvm_vm_stats)
        try c.encode(kvmVCPUStats, forKey: .kvm_vcpu_stats)
    }

    public init(from decoder: Decoder) throws {
        self.init()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        version = try c.decodeIfPresent(UInt64.self, forKey: .version) ?? 0
        intervalNanoseconds = try c.decodeIfPresent(UInt64.self, forKey: .interval_ns) ?? 0
        vcpus = try c.decodeIfPresent(Int.self, forKey: .vcpus) ?? 0
        startUnixNanoseconds = try c.decodeIfPresent(UInt64.self, forKey: .start_unix_ns) ?? 0
        timing = try c.decodeIfPresent(Bool.self, forKey: .timing) ?? true
        devices = (try c.decodeIfPresent([Device].self, forKey: .devices) ?? []).compactMap { d in
            guard let first = parseHex(d.first), let last = parseHex(d.last) else { return nil }
            return DeviceRange(bus: d.bus, first: first, last: last, name: d.name)
        }
        kvmVMStats = try c.decodeIfPresent([StatInfo].self, forKey: .kvm_vm_stats) ?? []
        kvmVCPUStats = try c.decodeIfPresent([StatInfo].self, forKey: .kvm_vcpu_stats) ?? []
    }
}

extension StatInfo: Codable {
    enum CodingKeys: String, CodingKey { case name, kind, unit, exponent, size }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(kind, forKey: .kind)
        try c.encode(unit, forKey: .unit)
        try c.encode(exponent, forKey: .exponent)
        try c.encode(size, forKey: .size)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(name: try c.decode(String.self, forKey: .name), kind: try c.decodeIfPresent(String.self, forKey: .kind) ?? "",
                  unit: try c.decodeIfPresent(String.self, forKey: .unit) ?? "",
                  exponent: try c.decodeIfPresent(Int.self, forKey: .exponent) ?? 0, size: try c.decodeIfPresent(Int.self, forKey: .size) ?? 1)
    }
}

extension StatsRecord: Codable {
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: SectionKey.self)
        try c.encode(kind.rawValue, forKey: SectionKey(stringValue: "record"))
        if kind == .interval {
            try c.encode(seq, forKey: SectionKey(stringValue: "seq"))
            try c.encode(duration, forKey: SectionKey(stringValue: "dt_ns"))
            if partial { try c.encode(true, forKey: SectionKey(stringValue: "partial")) }
        }
        try c.encode(time, forKey: SectionKey(stringValue: "t_ns"))
        try c.encode(vcpu, forKey: SectionKey(stringValue: "vcpu"))
        for name in Self.sectionOrder {
            if let section = sections[name] { try c.encode(section, forKey: SectionKey(stringValue: name)) }
        }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: SectionKey.self)
        func key(_ s: String) -> SectionKey { SectionKey(stringValue: s) }
        let kind: Kind = try c.decodeIfPresent(String.self, forKey: key("record")) == "final" ? .final : .interval
        self.init(kind: kind, vcpu: try c.decodeIfPresent(String.self, forKey: key("vcpu")) ?? "")
        seq = try c.decodeIfPresent(Int.self, forKey: key("seq")) ?? 0
        time = try c.decodeIfPresent(UInt64.self, forKey: key("t_ns")) ?? 0
        duration = try c.decodeIfPresent(UInt64.self, forKey: key("dt_ns")) ?? 0
        partial = try c.decodeIfPresent(Bool.self, forKey: key("partial")) ?? false
        for name in Self.sectionOrder {
            if let section = try c.decodeIfPresent([String: UInt64].self, forKey: key(name)) { sections[name] = section }
        }
    }
}
