import Glibc
import Synchronization

/// What the API drives: the machine. svmm's `serve` command implements it;
/// tests give a recording one.
public protocol APIBackend: AnyObject, Sendable {
    /// Builds the machine from the configuration and starts it; a failure
    /// is the 400's fault message (the machine is then not started).
    func start(_ config: FullVmConfiguration) throws(HTTPError)
    /// Returns once every vCPU is parked and every device quiet.
    func pause()
    func resume()
    /// Whether the machine is paused now (by the API or from svmm's console).
    var isPaused: Bool { get }
    /// The guest's Ctrl-Alt-Del, through the keyboard controller.
    func sendCtrlAltDel() throws(HTTPError)
    /// svmm's telemetry in the Prometheus text format.
    func prometheus() -> String
    /// One line of metrics JSON for the metrics file.
    func metricsLine() -> String
    /// Writes a snapshot of the paused machine: its state to `statePath`,
    /// guest RAM to `memoryPath` (all of it, or with `diff` the pages
    /// written since the last snapshot, into the base memory file there).
    /// `configuration` (the machine's as `GET /vm/config` shows it, without
    /// logger and metrics) goes into the state file for the restored
    /// instance to show.
    func createSnapshot(diff: Bool, statePath: String, memoryPath: String, configuration: FullVmConfiguration) throws(HTTPError)
    /// Builds the machine a snapshot describes and restores it, paused
    /// unless `resume`; `trackDirtyPages` for later Diff snapshots. Returns
    /// the restored machine's vCPUs and RAM (for `GET /machine-config`) and
    /// the configuration the snapshot recorded, where it did.
    func loadSnapshot(statePath: String, memoryPath: String, trackDirtyPages: Bool, resume: Bool) throws(HTTPError)
        -> (vcpus: Int, memoryMiB: Int, configuration: FullVmConfiguration?)
}

public enum InstanceState: String, Sendable, Codable {
    case notStarted = "Not started"
    case running = "Running"
    case paused = "Paused"
}

/// Firecracker's API over svmm: the configuration before the start, the
/// rules of which call is allowed when, and the answers. `handle` is called
/// by one thread at a time (the server's), so the state needs no lock
/// except for readers outside it (`state`).
public final class FirecrackerAPI: Sendable {
    public static let appName = "svmm"
    public let id: String
    public let version: String
    let backend: APIBackend
    private let shared: Mutex<Shared>

    struct Shared: Sendable {
        var state = InstanceState.notStarted
        var config = FullVmConfiguration()
        var machine = MachineConfiguration.defaults
        var metricsFile: Int32?
        var loggerFile: Int32?
    }

    public init(id: String, version: String, backend: APIBackend) {
        self.id = id
        self.version = version
        self.backend = backend
        shared = Mutex(Shared())
    }

    public var state: InstanceState {
        if shared.withLock({ $0.state }) == .notStarted { return .notStarted }
        return backend.isPaused ? .paused : .running
    }

    /// The configuration as `GET /vm/config` shows it.
    public var configuration: FullVmConfiguration {
        shared.withLock { s in
            var c = s.config
            c.machine_config = s.machine
            return c
        }
    }

    static let afterStart = "The requested operation is not supported after starting the microVM."
    static let beforeStart = "The requested operation is not supported before starting the microVM."

    /// Answers one request.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        do throws(HTTPError) {
            return try route(request)
        } catch {
            return .fault(error.status, error.message)
        }
    }

    func route(_ r: HTTPRequest) throws(HTTPError) -> HTTPResponse {
        let parts = r.path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        switch (r.method, parts.first, parts.count) {
        case ("GET", nil, 0):
            return json(InstanceInfo(app_name: Self.appName, id: id, state: state.rawValue, vmm_version: version))
        case ("GET", "version", 1):
            return json(FirecrackerVersion(firecracker_version: version))
        case ("GET", "machine-config", 1):
            return json(shared.withLock { $0.machine })
        case ("GET", "vm", 2) where parts[1] == "config":
            return json(configuration)
        case ("GET", "metrics", 1):
            return HTTPResponse(status: 200, body: Array(backend.prometheus().utf8), contentType: "text/plain; version=0.0.4; charset=utf-8")
        case ("PUT", "boot-source", 1):
            let body = try decode(BootSource.self, r)
            try preBoot()
            try Checks.readableFile(body.kernel_image_path, what: "The kernel file")
            if let initrd = body.initrd_path { try Checks.readableFile(initrd, what: "The initrd file") }
            shared.withLock { $0.config.boot_source = body }
            return .noContent
        case ("PUT", "machine-config", 1):
            let body = try decode(MachineConfiguration.self, r).withDefaults
            try preBoot()
            try Checks.machine(body)
            shared.withLock { $0.machine = body }
            return .noContent
        case ("PATCH", "machine-config", 1):
            let body = try decode(MachineConfigurationUpdate.self, r)
            try preBoot()
            var m = shared.withLock { $0.machine }
            if let v = body.vcpu_count { m.vcpu_count = v }
            if let v = body.mem_size_mib { m.mem_size_mib = v }
            if let v = body.smt { m.smt = v }
            if let v = body.track_dirty_pages { m.track_dirty_pages = v }
            if let v = body.cpu_template { m.cpu_template = v }
            if let v = body.huge_pages { m.huge_pages = v }
            try Checks.machine(m)
            shared.withLock { [m] in $0.machine = m }
            return .noContent
        case ("PUT", "drives", 2):
            let body = try decode(Drive.self, r)
            try Checks.sameID(parts[1], body.drive_id)
            try preBoot()
            try Checks.drive(body)
            try shared.withLock { s throws(HTTPError) in
                var drives = s.config.drives ?? []
                if body.is_root_device, drives.contains(where: { $0.is_root_device && $0.drive_id != body.drive_id }) {
                    throw HTTPError(status: 400, "A root block device already exists!")
                }
                if let i = drives.firstIndex(where: { $0.drive_id == body.drive_id }) { drives[i] = body } else { drives.append(body) }
                s.config.drives = drives
            }
            return .noContent
        case ("PATCH", "drives", 2):
            let body = try decode(PartialDrive.self, r)
            try Checks.sameID(parts[1], body.drive_id)
            try postBoot()
            guard let drive = configuration.drives?.first(where: { $0.drive_id == body.drive_id }) else {
                throw HTTPError(status: 400, "Invalid block device ID: \(body.drive_id)")
            }
            try Checks.noRateLimiter(body.rate_limiter, "rate_limiter")
            if let path = body.path_on_host, path != drive.path_on_host {
                throw HTTPError(status: 400, "svmm cannot change a drive's backing file while the guest runs.")
            }
            return .noContent
        case ("PUT", "network-interfaces", 2):
            let body = try decode(NetworkInterface.self, r)
            try Checks.sameID(parts[1], body.iface_id)
            try preBoot()
            try Checks.interface(body)
            try shared.withLock { s throws(HTTPError) in
                var nets = s.config.network_interfaces ?? []
                if nets.contains(where: { $0.iface_id != body.iface_id && $0.host_dev_name == body.host_dev_name }) {
                    throw HTTPError(status: 400, "The host device \(body.host_dev_name) is already in use by another interface.")
                }
                if let mac = body.guest_mac, nets.contains(where: { $0.iface_id != body.iface_id && $0.guest_mac?.lowercased() == mac.lowercased() }) {
                    throw HTTPError(status: 400, "The MAC address \(mac) is already in use by another interface.")
                }
                if let i = nets.firstIndex(where: { $0.iface_id == body.iface_id }) { nets[i] = body } else { nets.append(body) }
                s.config.network_interfaces = nets
            }
            return .noContent
        case ("PATCH", "network-interfaces", 2):
            let body = try decode(PartialNetworkInterface.self, r)
            try Checks.sameID(parts[1], body.iface_id)
            try postBoot()
            guard configuration.network_interfaces?.contains(where: { $0.iface_id == body.iface_id }) == true else {
                throw HTTPError(status: 400, "Invalid network interface ID: \(body.iface_id)")
            }
            try Checks.noRateLimiter(body.rx_rate_limiter, "rx_rate_limiter")
            try Checks.noRateLimiter(body.tx_rate_limiter, "tx_rate_limiter")
            return .noContent
        case ("PUT", "entropy", 1):
            let body = try decode(EntropyDevice.self, r)
            try preBoot()
            try Checks.noRateLimiter(body.rate_limiter, "rate_limiter")
            shared.withLock { $0.config.entropy = body }
            return .noContent
        case ("PUT", "metrics", 1):
            let body = try decode(Metrics.self, r)
            let fd = try Checks.openForAppending(body.metrics_path, what: "The metrics file")
            try shared.withLock { s throws(HTTPError) in
                guard s.metricsFile == nil else { close(fd); throw HTTPError(status: 400, "Reinitialization of metrics not allowed.") }
                s.metricsFile = fd
                s.config.metrics = body
            }
            return .noContent
        case ("PUT", "logger", 1):
            let body = try decode(Logger.self, r)
            if let level = body.level, !["error", "warning", "warn", "info", "debug", "trace", "off"].contains(level.lowercased()) {
                throw HTTPError(status: 400, "Invalid log level: \(level)")
            }
            let fd = try body.log_path.map { path throws(HTTPError) in try Checks.openForAppending(path, what: "The log file") }
            shared.withLock { s in
                if let old = s.loggerFile { close(old) }
                s.loggerFile = fd
                s.config.logger = body
            }
            return .noContent
        case ("PUT", "actions", 1):
            let body = try decode(InstanceActionInfo.self, r)
            switch body.action_type {
            case "InstanceStart":
                try preBoot()
                let config = configuration
                guard config.boot_source != nil else {
                    throw HTTPError(status: 400, "Cannot start microvm that was not configured with a kernel image (PUT /boot-source).")
                }
                try backend.start(config)
                shared.withLock { $0.state = .running }
                log("InstanceStart: the guest is running")
            case "SendCtrlAltDel":
                try postBoot()
                try backend.sendCtrlAltDel()
            case "FlushMetrics":
                try flushMetrics()
            default:
                throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: unknown variant `\(body.action_type)`, "
                                + "expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`.")
            }
            return .noContent
        case ("PUT", "snapshot", 2) where parts[1] == "create":
            let body = try decode(SnapshotCreateParams.self, r)
            try postBoot()
            guard state == .paused else { throw HTTPError(status: 400, "Create snapshot error: the microVM must be paused (PATCH /vm {\"state\": \"Paused\"}).") }
            guard body.version == nil else { throw HTTPError(status: 400, "svmm writes its own snapshot format version: leave version out.") }
            let diff: Bool
            switch body.snapshot_type ?? "Full" {
            case "Full": diff = false
            case "Diff": diff = true
            case let other:
                throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: unknown variant `\(other)`, expected `Full` or `Diff`.")
            }
            if diff, shared.withLock({ $0.machine.track_dirty_pages }) != true {
                throw HTTPError(status: 400, "Diff snapshots are not allowed on microVMs with dirty page tracking disabled.")
            }
            var recorded = configuration
            recorded.logger = nil
            recorded.metrics = nil
            try backend.createSnapshot(diff: diff, statePath: body.snapshot_path, memoryPath: body.mem_file_path, configuration: recorded)
            log("snapshot (\(diff ? "Diff" : "Full")) written to \(body.snapshot_path)")
            return .noContent
        case ("PUT", "snapshot", 2) where parts[1] == "load":
            try loadSnapshot(try decode(SnapshotLoadParams.self, r))
            return .noContent
        case ("PATCH", "vm", 1):
            let body = try decode(VmState.self, r)
            try postBoot()
            switch body.state {
            case "Paused":
                backend.pause()
                log("the guest is paused")
            case "Resumed":
                backend.resume()
                log("the guest is resumed")
            default:
                throw HTTPError(status: 400, "An error occurred when deserializing the json body of a request: unknown variant `\(body.state)`, "
                                + "expected one of `Paused`, `Resumed`.")
            }
            return .noContent
        default:
            throw HTTPError(status: 400, "Invalid request method and/or path: \(r.method) \(r.path.prefix(200)).")
        }
    }

    /// A whole configuration at once (`svmm serve --config-file`): each
    /// section checked as its PUT would be, then the start.
    public func configure(_ c: FullVmConfiguration) throws(HTTPError) {
        try preBoot()
        guard let boot = c.boot_source else { throw HTTPError(status: 400, "The configuration has no boot-source.") }
        try Checks.readableFile(boot.kernel_image_path, what: "The kernel file")
        if let initrd = boot.initrd_path { try Checks.readableFile(initrd, what: "The initrd file") }
        let machine = (c.machine_config ?? .defaults).withDefaults
        try Checks.machine(machine)
        let drives = c.drives ?? []
        for d in drives { try Checks.sameID(d.drive_id, d.drive_id); try Checks.drive(d) }
        if drives.filter(\.is_root_device).count > 1 { throw HTTPError(status: 400, "A root block device already exists!") }
        if Set(drives.map(\.drive_id)).count != drives.count { throw HTTPError(status: 400, "Two drives have the same drive_id.") }
        let nets = c.network_interfaces ?? []
        for n in nets { try Checks.sameID(n.iface_id, n.iface_id); try Checks.interface(n) }
        if Set(nets.map(\.iface_id)).count != nets.count || Set(nets.map(\.host_dev_name)).count != nets.count {
            throw HTTPError(status: 400, "Two network interfaces have the same iface_id or host_dev_name.")
        }
        if let e = c.entropy { try Checks.noRateLimiter(e.rate_limiter, "rate_limiter") }
        if c.logger != nil || c.metrics != nil {
            throw HTTPError(status: 400, "svmm takes logger and metrics through the API (PUT /logger, PUT /metrics), not the configuration file.")
        }
        shared.withLock { s in
            s.config = c
            s.config.machine_config = nil
            s.machine = machine
        }
        try backend.start(configuration)
        shared.withLock { $0.state = .running }
    }

    /// `PUT /snapshot/load`, and `svmm serve --restore`: on a fresh
    /// instance, before any configuration.
    public func loadSnapshot(_ body: SnapshotLoadParams) throws(HTTPError) {
        try preBoot()
        let configured = shared.withLock { $0.config.boot_source != nil || $0.config.drives != nil || $0.config.network_interfaces != nil
            || $0.config.entropy != nil || $0.machine != .defaults }
        if configured { throw HTTPError(status: 400, "Loading a microVM snapshot not allowed after configuring boot-specific resources.") }
        guard body.network_overrides == nil else { throw HTTPError(status: 400, "svmm reattaches the TAP names in the snapshot: leave network_overrides out.") }
        let memoryPath: String
        switch (body.mem_file_path, body.mem_backend) {
        case let (path?, nil): memoryPath = path
        case let (nil, backend?):
            guard backend.backend_type == "File" else {
                throw HTTPError(status: 400, "svmm restores guest memory from a file: backend_type must be File, not \(backend.backend_type.prefix(32)).")
            }
            memoryPath = backend.backend_path
        default:
            throw HTTPError(status: 400, "Give exactly one of mem_backend and mem_file_path.")
        }
        let track = body.track_dirty_pages ?? body.enable_diff_snapshots ?? false
        let restored = try backend.loadSnapshot(statePath: body.snapshot_path, memoryPath: memoryPath, trackDirtyPages: track,
                                                resume: body.resume_vm ?? false)
        shared.withLock { s in
            s.state = .running
            // What the snapshot's instance was configured with (its drives,
            // interfaces, boot source), as Firecracker shows after a load;
            // this instance's own logger and metrics stay.
            if let c = restored.configuration {
                s.config.boot_source = c.boot_source
                s.config.drives = c.drives
                s.config.network_interfaces = c.network_interfaces
                s.config.entropy = c.entropy
                if let m = c.machine_config { s.machine = m }
            }
            s.machine.vcpu_count = restored.vcpus
            s.machine.mem_size_mib = restored.memoryMiB
            s.machine.track_dirty_pages = track
        }
        log("snapshot \(body.snapshot_path) loaded")
    }

    func decode<T: APIBody>(_ type: T.Type, _ r: HTTPRequest) throws(HTTPError) -> T {
        guard !r.body.isEmpty else { throw HTTPError(status: 400, "Empty request body: \(r.method) \(r.path) needs a JSON body.") }
        return try APIJSON.decode(type, from: r.body)
    }

    func preBoot() throws(HTTPError) {
        if state != .notStarted { throw HTTPError(status: 400, Self.afterStart) }
    }

    func postBoot() throws(HTTPError) {
        if state == .notStarted { throw HTTPError(status: 400, Self.beforeStart) }
    }

    func json<T: Encodable>(_ value: T) -> HTTPResponse { HTTPResponse(status: 200, body: APIJSON.encode(value)) }

    /// Writes one metrics line to the metrics file (`FlushMetrics`).
    func flushMetrics() throws(HTTPError) {
        guard let fd = shared.withLock({ $0.metricsFile }) else {
            throw HTTPError(status: 400, "The metrics system is not initialized (PUT /metrics first).")
        }
        let line = Array((backend.metricsLine() + "\n").utf8)
        guard Checks.writeAll(fd, line) else { throw HTTPError(status: 400, "Cannot write the metrics file.") }
    }

    /// A line in the log file, when `PUT /logger` gave one.
    public func log(_ message: String) {
        guard let fd = shared.withLock({ $0.loggerFile }) else { return }
        _ = Checks.writeAll(fd, Array("[\(id)] \(message)\n".utf8))
    }
}
