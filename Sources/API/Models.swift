import FoundationEssentials

/// The bodies of Firecracker's API, by the names of its swagger definitions
/// (docs/api.md lists the version and what svmm takes of each). Field names
/// are the wire's; unknown fields are refused, as Firecracker's serde
/// `deny_unknown_fields` does.
public struct BootSource: Codable, Sendable, Equatable, APIBody {
    public var kernel_image_path: String
    public var boot_args: String?
    public var initrd_path: String?
    public static let fields = ["kernel_image_path", "boot_args", "initrd_path"]
}

public struct MachineConfiguration: Codable, Sendable, Equatable, APIBody {
    public var vcpu_count: Int
    public var mem_size_mib: Int
    public var smt: Bool?
    public var track_dirty_pages: Bool?
    public var cpu_template: String?
    public var huge_pages: String?
    public static let fields = ["vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "cpu_template", "huge_pages"]

    /// The optional fields a PUT leaves out, at their defaults (a PUT replaces the whole configuration).
    public var withDefaults: MachineConfiguration {
        var m = self
        m.smt = m.smt ?? false
        m.track_dirty_pages = m.track_dirty_pages ?? false
        m.huge_pages = m.huge_pages ?? "None"
        return m
    }

    /// Firecracker's defaults before any PUT: 1 vCPU, 128 MiB.
    public static let defaults = MachineConfiguration(vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false,
                                                      cpu_template: nil, huge_pages: "None")
}

/// A PATCH of the machine configuration: any subset of the fields.
public struct MachineConfigurationUpdate: Codable, Sendable, Equatable, APIBody {
    public var vcpu_count: Int?
    public var mem_size_mib: Int?
    public var smt: Bool?
    public var track_dirty_pages: Bool?
    public var cpu_template: String?
    public var huge_pages: String?
    public static let fields = MachineConfiguration.fields
}

public struct Drive: Codable, Sendable, Equatable, APIBody {
    public var drive_id: String
    public var path_on_host: String?
    public var is_root_device: Bool
    public var is_read_only: Bool?
    public var partuuid: String?
    public var cache_type: String?
    public var io_engine: String?
    public var rate_limiter: JSONPresence?
    public var socket: String?
    public static let fields = ["drive_id", "path_on_host", "is_root_device", "is_read_only", "partuuid", "cache_type",
                                "io_engine", "rate_limiter", "socket"]
}

public struct PartialDrive: Codable, Sendable, Equatable, APIBody {
    public var drive_id: String
    public var path_on_host: String?
    public var rate_limiter: JSONPresence?
    public static let fields = ["drive_id", "path_on_host", "rate_limiter"]
}

public struct NetworkInterface: Codable, Sendable, Equatable, APIBody {
    public var iface_id: String
    public var host_dev_name: String
    public var guest_mac: String?
    public var mtu: Int?
    public var rx_rate_limiter: JSONPresence?
    public var tx_rate_limiter: JSONPresence?
    public static let fields = ["iface_id", "host_dev_name", "guest_mac", "mtu", "rx_rate_limiter", "tx_rate_limiter"]
}

public struct PartialNetworkInterface: Codable, Sendable, Equatable, APIBody {
    public var iface_id: String
    public var rx_rate_limiter: JSONPresence?
    public var tx_rate_limiter: JSONPresence?
    public static let fields = ["iface_id", "rx_rate_limiter", "tx_rate_limiter"]
}

public struct EntropyDevice: Codable, Sendable, Equatable, APIBody {
    public var rate_limiter: JSONPresence?
    public static let fields = ["rate_limiter"]
}

public struct InstanceActionInfo: Codable, Sendable, Equatable, APIBody {
    public var action_type: String
    public static let fields = ["action_type"]
}

public struct VmState: Codable, Sendable, Equatable, APIBody {
    public var state: String
    public static let fields = ["state"]
}

public struct Metrics: Codable, Sendable, Equatable, APIBody {
    public var metrics_path: String
    public static let fields = ["metrics_path"]
}

public struct Logger: Codable, Sendable, Equatable, APIBody {
    public var log_path: String?
    public var level: String?
    public var show_level: Bool?
    public var show_log_origin: Bool?
    public var module: String?
    public static let fields = ["log_path", "level", "show_level", "show_log_origin", "module"]
}

/// `PUT /snapshot/create`: on a paused guest.
public struct SnapshotCreateParams: Codable, Sendable, Equatable, APIBody {
    /// `Full` (the default) or `Diff`.
    public var snapshot_type: String?
    public var snapshot_path: String
    public var mem_file_path: String
    /// Firecracker's deprecated target version: refused unless absent.
    public var version: String?
    public static let fields = ["snapshot_type", "snapshot_path", "mem_file_path", "version"]
}

/// `mem_backend` of `PUT /snapshot/load`.
public struct MemoryBackend: Codable, Sendable, Equatable, APIBody {
    /// `File` (`Uffd`, a page-fault handler's socket, is refused).
    public var backend_type: String
    public var backend_path: String
    public static let fields = ["backend_type", "backend_path"]

    public init(backend_type: String, backend_path: String) {
        self.backend_type = backend_type
        self.backend_path = backend_path
    }
}

/// `PUT /snapshot/load`: on a fresh svmm serve, before any configuration.
public struct SnapshotLoadParams: Codable, Sendable, Equatable, APIBody {
    public var snapshot_path: String
    /// Deprecated in Firecracker for `mem_backend`; one of the two.
    public var mem_file_path: String?
    public var mem_backend: MemoryBackend?
    /// Deprecated in Firecracker for `track_dirty_pages`.
    public var enable_diff_snapshots: Bool?
    public var track_dirty_pages: Bool?
    public var resume_vm: Bool?
    /// Refused unless absent: svmm reattaches the TAP names saved.
    public var network_overrides: JSONPresence?
    public static let fields = ["snapshot_path", "mem_file_path", "mem_backend", "enable_diff_snapshots", "track_dirty_pages",
                                "resume_vm", "network_overrides"]

    public init(snapshot_path: String, mem_backend: MemoryBackend, track_dirty_pages: Bool, resume_vm: Bool) {
        self.snapshot_path = snapshot_path
        self.mem_backend = mem_backend
        self.track_dirty_pages = track_dirty_pages
        self.resume_vm = resume_vm
    }
}

public struct InstanceInfo: Codable, Sendable, Equatable {
    public var app_name: String
    public var id: String
    public var state: String
    public var vmm_version: String
}

public struct FirecrackerVersion: Codable, Sendable, Equatable {
    public var firecracker_version: String
}

struct Fault: Codable, Sendable {
    var fault_message: String
}

/// `GET /vm/config`, and the configuration file of `svmm serve --config-file`.
public struct FullVmConfiguration: Codable, Sendable, Equatable, APIBody {
    public var boot_source: BootSource?
    public var drives: [Drive]?
    public var machine_config: MachineConfiguration?
    public var network_interfaces: [NetworkInterface]?
    public var entropy: EntropyDevice?
    public var logger: Logger?
    public var metrics: Metrics?

    enum CodingKeys: String, CodingKey {
        case boot_source = "boot-source", drives, machine_config = "machine-config"
        case network_interfaces = "network-interfaces", entropy, logger, metrics
    }

    public static let fields = ["boot-source", "drives", "machine-config", "network-interfaces", "entropy", "logger", "metrics"]

    public init(boot_source: BootSource? = nil, drives: [Drive]? = nil, machine_config: MachineConfiguration? = nil,
                network_interfaces: [NetworkInterface]? = nil, entropy: EntropyDevice? = nil, logger: Logger? = nil, metrics: Metrics? = nil) {
        self.boot_source = boot_source
        self.drives = drives
        self.machine_config = machine_config
        self.network_interfaces = network_interfaces
        self.entropy = entropy
        self.logger = logger
        self.metrics = metrics
    }
}

/// A field svmm accepts only as absent or null (the rate limiters: svmm has
/// none, and a limit it would not keep is refused, not ignored). Decoding
/// records whether a value was there, whatever its shape.
public struct JSONPresence: Codable, Sendable, Equatable {
    public init(from decoder: Decoder) throws {
        _ = try? decoder.singleValueContainer()
    }
    public init() {}
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encodeNil()
    }
}

/// A request body: Codable, with the list of its fields for the unknown-field check.
public protocol APIBody: Codable {
    static var fields: [String] { get }
}

/// The keys of a JSON object, and of the objects in it (for the unknown-field check).
struct JSONShape: Decodable {
    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
    /// nil when the value is not an object.
    var keys: [String]?
    var members: [String: JSONShape] = [:]
    var elements: [JSONShape] = []

    init(from decoder: Decoder) throws {
        if let object = try? decoder.container(keyedBy: Key.self) {
            keys = object.allKeys.map(\.stringValue)
            for key in object.allKeys { members[key.stringValue] = try object.decode(JSONShape.self, forKey: key) }
        } else if var array = try? decoder.unkeyedContainer() {
            while !array.isAtEnd { elements.append(try array.decode(JSONShape.self)) }
        }
    }
}

public enum APIJSON {
    /// Decodes a body: a JSON object with no field outside `T.fields`;
    /// anything else is a 400 whose message says what is wrong.
    public static func decode<T: APIBody>(_ type: T.Type, from body: [UInt8]) throws(HTTPError) -> T {
        let data = Data(body)
        let shape: JSONShape
        do { shape = try JSONDecoder().decode(JSONShape.self, from: data) } catch {
            throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: \(describe(error)).")
        }
        guard let keys = shape.keys else {
            throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: expected a JSON object.")
        }
        try checkKeys(keys, allowed: T.fields)
        do { return try JSONDecoder().decode(T.self, from: data) } catch {
            throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: \(describe(error)).")
        }
    }

    static func checkKeys(_ keys: [String], allowed: [String], in section: String? = nil) throws(HTTPError) {
        for key in keys.sorted() where !allowed.contains(key) {
            let where_ = section.map { " in `\($0)`" } ?? ""
            throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: unknown field `\(key)`\(where_), expected one of "
                            + allowed.map { "`\($0)`" }.joined(separator: ", ") + ".")
        }
    }

    /// Decodes a configuration file: every section's fields checked too.
    public static func decodeConfiguration(_ bytes: [UInt8]) throws(HTTPError) -> FullVmConfiguration {
        let config = try decode(FullVmConfiguration.self, from: bytes)
        // The sections' own keys (decode() above checked the top level).
        let shape = try? JSONDecoder().decode(JSONShape.self, from: Data(bytes))
        func check(_ name: String, _ fields: [String]) throws(HTTPError) {
            guard let member = shape?.members[name] else { return }
            if let keys = member.keys { try checkKeys(keys, allowed: fields, in: name) }
            for element in member.elements { if let keys = element.keys { try checkKeys(keys, allowed: fields, in: name) } }
        }
        try check("boot-source", BootSource.fields)
        try check("drives", Drive.fields)
        try check("machine-config", MachineConfiguration.fields)
        try check("network-interfaces", NetworkInterface.fields)
        try check("entropy", EntropyDevice.fields)
        try check("logger", Logger.fields)
        try check("metrics", Metrics.fields)
        return config
    }

    /// The fault message of an error body.
    public static func faultMessage(_ body: [UInt8]) throws -> String {
        try JSONDecoder().decode(Fault.self, from: Data(body)).fault_message
    }

    /// The JSON of a response body (keys sorted, so bodies compare).
    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? Array(encoder.encode(value))) ?? Array(#"{"fault_message":"response not encodable"}"#.utf8)
    }

    /// A decoding error in a line: what was wrong, and where.
    static func describe(_ error: Error) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let p = context.codingPath.map(\.stringValue).filter { !$0.isEmpty }.joined(separator: ".")
            return p.isEmpty ? "" : " at `\(p)`"
        }
        switch error {
        case let DecodingError.keyNotFound(key, context): return "missing field `\(key.stringValue)`\(path(context))"
        case let DecodingError.typeMismatch(type, context): return "invalid type\(path(context)): expected \(typeName(type))"
        case let DecodingError.valueNotFound(type, context): return "null\(path(context)) where \(typeName(type)) is expected"
        case let DecodingError.dataCorrupted(context):
            return context.codingPath.isEmpty ? "not valid JSON" : "invalid value\(path(context))"
        default: return "not valid JSON"
        }
    }

    static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type: "an integer"
        case is Bool.Type: "a boolean"
        default: "\(type)"
        }
    }
}
