import API
import ArgumentParser
import Dispatch
import FoundationEssentials
import Glibc
import Machine
import Stats
import Synchronization
import VMCore

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a guest configured through Firecracker's API on a Unix socket, or from its configuration file.",
        discussion: """
            With --api-sock, svmm waits for the configuration on the socket and
            boots at `PUT /actions {"action_type": "InstanceStart"}`; the API
            stays up while the guest runs (pause and resume with `PATCH /vm`,
            `GET /vm/config`, `GET /metrics` in the Prometheus text format).
            With --config-file (Firecracker's JSON configuration: boot-source,
            drives, machine-config, network-interfaces, entropy), svmm boots at
            once, and with --api-sock too keeps the API. docs/api.md lists the
            calls and what svmm takes of each body.

            The guest's console is COM1 on stdout; stdin goes to the guest.
            svmm exits when the guest powers off or reboots, with the statuses of
            `svmm boot`; 73 when the socket cannot be made, 78 when the
            configuration file is not valid (a machine it describes that cannot
            be built exits with `svmm boot`'s status for the cause).

            Examples:
              svmm serve --api-sock /tmp/svmm.sock
              svmm serve --config-file vm.json
              svmm serve --api-sock /tmp/svmm.sock --config-file vm.json
              svmm serve --restore vm.snap --mem vm.mem [--api-sock /tmp/svmm.sock]

            Snapshots (docs/snapshot.md): `PUT /snapshot/create` on a paused
            guest (or `svmm ctl snapshot`), `PUT /snapshot/load` on a fresh
            `svmm serve --api-sock`, or --restore. A snapshot svmm cannot
            restore exits 80 (not a snapshot), 81 (another format version), 82
            (truncated), 83 (corrupted), 84 (malformed, or not a machine this
            svmm builds), 85 (a memory file of the wrong size); 66 when a file
            cannot be read.
            """
    )

    @Option(help: ArgumentHelp("The API's Unix socket (an old socket there is replaced).", valueName: "PATH"))
    var apiSock: String?

    @Option(help: ArgumentHelp("Firecracker's JSON configuration: boot at once.", valueName: "FILE"))
    var configFile: String?

    @Option(help: ArgumentHelp("Restore this snapshot's state file (with --mem) instead of booting.", valueName: "SNAPSHOT"))
    var restore: String?

    @Option(help: ArgumentHelp("The snapshot's memory file (mapped privately: never written).", valueName: "FILE"))
    var mem: String?

    @Flag(help: "With --restore: leave the guest paused (resume it through the API).")
    var paused = false

    @Flag(help: "Record the pages written, for Diff snapshots (with --restore).")
    var trackDirtyPages = false

    @Flag(help: "Print on stderr how long each restore took (reading the state file, building the machine, setting its state).")
    var restoreTime = false

    @Option(help: "The instance's ID, as `GET /` reports it.")
    var id = "anonymous-instance"

    @Option(help: "The largest request body the API takes, in bytes (Firecracker's default).")
    var httpApiMaxPayloadSize = HTTPParser.defaultMaxBodyBytes

    @Option(help: "Stop the guest this long after it starts, e.g. 30s, 2m (exit 124).")
    var timeout: String?

    @Flag(help: "Print on stderr how many exits to userspace the guest caused, as `svmm boot --exit-stats` does.")
    var exitStats = false

    @Option(help: "Path of the KVM device.")
    var device: String = "/dev/kvm"

    func validate() throws {
        guard apiSock != nil || configFile != nil || restore != nil else {
            throw ValidationError("give --api-sock PATH, --config-file FILE, --restore SNAPSHOT --mem FILE, or --api-sock with one of the others")
        }
        guard configFile == nil || restore == nil else { throw ValidationError("--config-file boots, --restore restores: give one") }
        guard (restore == nil) == (mem == nil) else { throw ValidationError("--restore SNAPSHOT and --mem FILE go together") }
        guard restore != nil || (!paused && !trackDirtyPages) else { throw ValidationError("--paused and --track-dirty-pages are for --restore") }
        if let timeout, Sizes.seconds(timeout) == nil { throw ValidationError("--timeout '\(timeout)' is not a duration (e.g. 30s, 2m, 500ms)") }
        guard httpApiMaxPayloadSize > 0 else { throw ValidationError("--http-api-max-payload-size must be above 0") }
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        let stopSignals = StopSignals.block()
        let output: ConsoleOutput, input: ConsoleInput
        do {
            output = try ConsoleOutput(fd: 1)
            input = try ConsoleInput(virtio: false)
        } catch { fail("\(error)", .failure) }

        var fileConfig: FullVmConfiguration?
        if let configFile {
            let file: ImageSource
            do { file = try ImageSource(path: configFile) } catch {
                fail("cannot read --config-file \(configFile): \(error.reason)", .noInput)
            }
            guard file.count <= 1 << 20 else { fail("--config-file \(configFile): larger than 1 MiB", .config) }
            let bytes = file.read(0..<file.count)
            do { fileConfig = try APIJSON.decodeConfiguration(bytes) } catch {
                fail("--config-file \(configFile): \(error.message)", .config)
            }
        }
        let backend = ServeBackend(started: started, output: output, input: input, kvmPath: device,
                                   timeoutSeconds: timeout.flatMap(Sizes.seconds), reportRestoreTime: restoreTime)
        let api = FirecrackerAPI(id: id, version: SVMM.version, backend: backend)
        var server: APIServer?
        if let apiSock {
            let listener: Int32
            do { listener = try UnixListener.bind(path: apiSock, what: "--api-sock") } catch { fail(error.description, .cannotCreate) }
            server = APIServer(listener: listener, path: apiSock, maxBodyBytes: httpApiMaxPayloadSize) { api.handle($0) }
            do { try server!.start() } catch { fail("\(error)", .failure) }
        }
        StopSignals.handle(stopSignals) { backend.stop(signal: $0) }
        if let fileConfig {
            do { try api.configure(fileConfig) } catch {
                server?.stop()
                // A machine that could not be built exits as `svmm boot` would (a missing TAP 68, a locked disk 75, …).
                if let failure = backend.startFailure { fail(failure.message, failure.status) }
                fail("--config-file \(configFile!): \(error.message)", .config)
            }
        }
        if let restore, let mem {
            let params = SnapshotLoadParams(snapshot_path: restore, mem_backend: MemoryBackend(backend_type: "File", backend_path: mem),
                                            track_dirty_pages: trackDirtyPages, resume_vm: !paused)
            do { try api.loadSnapshot(params) } catch {
                server?.stop()
                if let failure = backend.startFailure { fail(failure.message, failure.status) }
                fail("--restore \(restore): \(error.message)", .failure)
            }
        }
        // Waits for InstanceStart (or a signal before it).
        guard let machine = backend.waitForStart() else {
            server?.stop()
            Messages.line("svmm: stopped by signal \(backend.signalBeforeStart) before the guest started")
            throw ExitCode(128 + backend.signalBeforeStart)
        }
        let outcome = machine.machine.wait(timeout: backend.timeoutSeconds)
        output.close()
        server?.stop()
        if exitStats { MachineReport.exitStats(machine) }
        detachTeardown()
        try MachineReport.outcome(outcome, machine: machine, timeout: timeout ?? "")
    }
}

/// The machine behind `svmm serve`'s API: built and started at
/// InstanceStart on the API's thread, waited for on the main thread.
final class ServeBackend: APIBackend {
    let started: UInt64
    let output: ConsoleOutput
    let input: ConsoleInput
    let kvmPath: String
    let timeoutSeconds: Double?
    private let machine = Mutex<LinuxMachine?>(nil)
    /// What the machine was built from (a snapshot's configuration).
    private let request = Mutex<MachineRequest?>(nil)
    private let recorder = Mutex<StatsRecorder?>(nil)
    private let startedOrStopped = DispatchSemaphore(value: 0)
    private let signal = Atomic<Int32>(0)
    private let failure = Mutex<StartFailure?>(nil)

    /// Why the last InstanceStart could not build the machine, if it could not.
    var startFailure: StartFailure? { failure.withLock { $0 } }

    let reportRestoreTime: Bool

    init(started: UInt64, output: ConsoleOutput, input: ConsoleInput, kvmPath: String, timeoutSeconds: Double?, reportRestoreTime: Bool = false) {
        self.reportRestoreTime = reportRestoreTime
        self.started = started
        self.output = output
        self.input = input
        self.kvmPath = kvmPath
        self.timeoutSeconds = timeoutSeconds
    }

    var signalBeforeStart: Int32 { signal.load(ordering: .acquiring) }

    /// The started machine, or nil when a signal came first.
    func waitForStart() -> LinuxMachine? {
        startedOrStopped.wait()
        return machine.withLock { $0 }
    }

    func stop(signal sig: Int32) {
        if let m = machine.withLock({ $0 }) {
            m.stop(.interrupted(signal: sig))
        } else {
            signal.store(sig, ordering: .releasing)
            startedOrStopped.signal()
        }
    }

    func start(_ config: FullVmConfiguration) throws(HTTPError) {
        var request = try Self.request(config)
        request.kvmPath = kvmPath
        request.timeoutSeconds = timeoutSeconds
        let built: LinuxMachine
        do { built = try request.build(started: started, output: output, input: input) } catch {
            failure.withLock { $0 = error }
            throw HTTPError(status: 400, "Cannot start the microVM: \(error.message)")
        }
        try run(built, request: request)
    }

    /// Starts a built machine (paused first when `paused`) and hands it to
    /// the main thread's wait.
    func run(_ built: LinuxMachine, request: MachineRequest, paused: Bool = false) throws(HTTPError) {
        if paused { built.machine.pause() }
        do {
            try built.machine.start()
            try input.start(serial: built.serial, machine: built.machine)
        } catch {
            built.stop(.hostError("\(error)"))
            machine.withLock { $0 = built }
            startedOrStopped.signal()
            throw HTTPError(status: 500, "Cannot start the microVM: \(error)")
        }
        recorder.withLock {
            $0 = StatsRecorder(telemetry: built.telemetry, vmStats: built.vmStats, devices: built.deviceRanges,
                               intervalNanoseconds: 1_000_000_000, output: nil, format: .jsonl)
        }
        self.request.withLock { $0 = request }
        machine.withLock { $0 = built }
        startedOrStopped.signal()
    }

    func createSnapshot(diff: Bool, statePath: String, memoryPath: String, configuration: FullVmConfiguration) throws(HTTPError) {
        guard let built = machine.withLock({ $0 }), let request = request.withLock({ $0 }) else {
            throw HTTPError(status: 400, Self.notRunning)
        }
        do { try SnapshotFiles.create(built, request: request, api: configuration, diff: diff, statePath: statePath, memoryPath: memoryPath) } catch {
            throw HTTPError(status: 400, "Create snapshot error: \(error.message)")
        }
    }

    func loadSnapshot(statePath: String, memoryPath: String, trackDirtyPages: Bool, resume: Bool) throws(HTTPError)
        -> (vcpus: Int, memoryMiB: Int, configuration: FullVmConfiguration?) {
        let built: LinuxMachine, request: MachineRequest, api: FullVmConfiguration?
        do {
            (built, request, api) = try SnapshotFiles.restore(statePath: statePath, memoryPath: memoryPath, trackDirtyPages: trackDirtyPages,
                                                         kvmPath: kvmPath, started: started, output: output, input: input,
                                                         reportTime: reportRestoreTime)
        } catch {
            failure.withLock { $0 = StartFailure(message: error.message, status: error.status) }
            throw HTTPError(status: 400, "Load snapshot error: \(error.message)")
        }
        var timed = request
        timed.timeoutSeconds = timeoutSeconds
        try run(built, request: timed, paused: !resume)
        return (request.cpus, Int(request.memoryBytes >> 20), api)
    }

    static let notRunning = "The microVM is not running."

    /// The machine the API's configuration describes. Drives are vda, vdb, …
    /// in order with the root device first, as Firecracker orders them.
    static func request(_ config: FullVmConfiguration) throws(HTTPError) -> MachineRequest {
        guard let boot = config.boot_source else { throw HTTPError(status: 400, "No boot source.") }
        var r = MachineRequest(kernelPath: boot.kernel_image_path)
        r.initrdPath = boot.initrd_path
        let machineConfig = config.machine_config ?? .defaults
        r.cpus = machineConfig.vcpu_count
        r.memoryBytes = UInt64(machineConfig.mem_size_mib) << 20
        r.trackDirtyPages = machineConfig.track_dirty_pages ?? false
        r.entropy = config.entropy != nil
        r.keyboard = true   // SendCtrlAltDel
        var args = boot.boot_args ?? BootConfiguration.defaultCommandLine
        let drives = (config.drives ?? []).sorted { $0.is_root_device && !$1.is_root_device }
        for drive in drives {
            var options = DiskImage.Options(path: drive.path_on_host ?? "")
            options.readOnly = drive.is_read_only ?? false
            options.cache = drive.cache_type == "Writeback" ? .writeback : .unsafe
            options.serial = String(drive.drive_id.prefix(20))
            r.disks.append(options)
        }
        if let root = drives.first, root.is_root_device {
            args += root.partuuid.map { " root=PARTUUID=\($0)" } ?? " root=/dev/vda"
            args += root.is_read_only == true ? " ro" : " rw"
        }
        r.commandLine = args
        for interface in config.network_interfaces ?? [] {
            var options = NetSpec.Options(tap: interface.host_dev_name)
            if let mac = interface.guest_mac {
                guard let bytes = Tap.parseMAC(mac) else { throw HTTPError(status: 400, "Invalid guest_mac \(mac).") }
                options.mac = bytes
            }
            r.nets.append(options)
        }
        return r
    }

    var isPaused: Bool { machine.withLock { $0 }?.machine.isPaused ?? false }

    func pause() { machine.withLock { $0 }?.machine.pause() }

    func resume() { machine.withLock { $0 }?.machine.resume() }

    func sendCtrlAltDel() throws(HTTPError) {
        guard let keyboard = machine.withLock({ $0 })?.keyboard else { throw HTTPError(status: 400, "The guest has no keyboard controller.") }
        guard keyboard.sendCtrlAltDel() else { throw HTTPError(status: 400, "The keyboard's buffer is full: the guest has not read the keys sent before.") }
    }

    func prometheus() -> String {
        guard let recorder = recorder.withLock({ $0 }) else { return "" }
        let live = recorder.live()
        return PrometheusText.render(header: recorder.header, vcpus: live.vcpus, vm: live.vm, vcpuStats: nil, vmStats: nil)
    }

    func metricsLine() -> String {
        var exits: [String: UInt64] = [:]
        if let recorder = recorder.withLock({ $0 }) {
            for sample in recorder.live().vcpus {
                for reason in ExitReason.allCases { exits[reason.name, default: 0] += sample.exits[reason.rawValue] }
            }
        }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let ms = UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec) / 1_000_000
        struct Line: Encodable { let utc_timestamp_ms: UInt64; let vcpu_exits: [String: UInt64] }
        return String(decoding: APIJSON.encode(Line(utc_timestamp_ms: ms, vcpu_exits: exits)), as: UTF8.self)
    }
}
