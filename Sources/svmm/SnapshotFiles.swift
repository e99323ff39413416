import API
import Dispatch
import FoundationEssentials
import Glibc
import Machine
import SystemPackage
import VMCore

/// A snapshot's `CONF` section: how to build the machine again (the
/// memory layout, vCPUs, devices and their host files and TAPs). Kernel and
/// initrd are not needed: they are in guest RAM.
struct SnapshotConfiguration: Codable {
    struct Disk: Codable {
        var path: String
        var readOnly: Bool
        var serial: String?
        var cache: String
        var discard: Bool
    }
    struct Net: Codable {
        var tap: String
        var mac: [UInt8]
        /// The queue pairs the device had (the restored TAP opens as many).
        var queues: Int
        var vhost: Bool
    }
    var cpus: Int
    var memoryBytes: UInt64
    var console: String
    var entropy: Bool
    var pit: Bool
    var keyboard: Bool
    var cpuFeatures: [String]
    var disks: [Disk]
    var nets: [Net]
    /// The instance's configuration as `GET /vm/config` showed it (no
    /// logger or metrics), where the machine came through the API: what a
    /// restored instance shows. Absent from snapshots made before it was kept.
    var api: FullVmConfiguration?

    init(_ r: MachineRequest, machine: LinuxMachine, api: FullVmConfiguration?) {
        self.api = api
        cpus = r.cpus
        memoryBytes = r.memoryBytes
        console = r.console.rawValue
        entropy = r.entropy
        pit = r.pit
        keyboard = r.keyboard
        cpuFeatures = r.cpuFeatures.map { ($0.enable ? "+" : "-") + $0.name }
        disks = r.disks.map { Disk(path: $0.path, readOnly: $0.readOnly, serial: $0.serial, cache: $0.cache.rawValue, discard: $0.discard) }
        nets = zip(r.nets, machine.nets).map { options, net in Net(tap: options.tap, mac: net.mac, queues: net.pairs, vhost: options.vhost) }
    }

    /// The request that builds this machine again, waiting for the restore.
    func request(kvmPath: String) throws(SnapshotLoadFailure) -> MachineRequest {
        var r = MachineRequest(kernelPath: "")
        r.restoring = true
        r.kvmPath = kvmPath
        guard (1...255).contains(cpus), memoryBytes >= 1 << 20, memoryBytes % 4096 == 0 else {
            throw SnapshotLoadFailure("the snapshot's machine (\(cpus) vCPUs, \(memoryBytes) bytes) is not one svmm builds", .snapshotMalformed)
        }
        r.cpus = cpus
        r.memoryBytes = memoryBytes
        guard let console = ConsoleDevice(rawValue: console) else { throw SnapshotLoadFailure("unknown console '\(console)' in the snapshot", .snapshotMalformed) }
        r.console = console
        r.entropy = entropy
        r.pit = pit
        r.keyboard = keyboard
        do { r.cpuFeatures = try CPUFeatures.parse(cpuFeatures.joined(separator: ",")) } catch {
            throw SnapshotLoadFailure("the snapshot's CPU features: \(error.message)", .snapshotMalformed)
        }
        for d in disks {
            guard let cache = DiskImage.Cache(rawValue: d.cache) else { throw SnapshotLoadFailure("unknown disk cache '\(d.cache)' in the snapshot", .snapshotMalformed) }
            r.disks.append(DiskImage.Options(path: d.path, readOnly: d.readOnly, serial: d.serial, cache: cache, discard: d.discard))
        }
        for n in nets {
            guard n.mac.count == 6, (1...NetSpec.maxQueues).contains(n.queues), (try? NetSpec.parse("tap=\(n.tap)")) != nil else {
                throw SnapshotLoadFailure("the snapshot's interface \(n.tap) does not fit", .snapshotMalformed)
            }
            r.nets.append(NetSpec.Options(tap: n.tap, mac: n.mac, queues: n.queues, vhost: n.vhost))
        }
        return r
    }
}

/// A snapshot that could not be taken or restored: the one line, and its
/// exit status (docs/snapshot.md); the API answers 400 with the line.
struct SnapshotLoadFailure: Error {
    let message: String
    let status: ExitStatus
    init(_ message: String, _ status: ExitStatus) {
        self.message = message
        self.status = status
    }
}

/// Writing and reading snapshot files, for the API and `svmm serve --restore`.
enum SnapshotFiles {
    /// A state file is small (KVM's and the devices' state): more than this is not one.
    static let maxStateBytes = 64 << 20

    /// Writes a snapshot of the paused `machine`: guest RAM first (Full: a
    /// new sparse file at `memoryPath`; Diff: the dirtied pages into the
    /// base memory file there), then the state file, through a temporary
    /// name renamed into place, so a state file is never half written.
    static func create(_ machine: LinuxMachine, request: MachineRequest, api: FullVmConfiguration?, diff: Bool, statePath: String,
                       memoryPath: String) throws(SnapshotLoadFailure) {
        let configuration: [UInt8]
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            configuration = Array(try encoder.encode(SnapshotConfiguration(request, machine: machine, api: api)))
        } catch { throw SnapshotLoadFailure("cannot encode the machine's configuration: \(error)", .failure) }
        let state: SnapshotState
        do { state = try machine.snapshotState(configuration: configuration) } catch {
            throw SnapshotLoadFailure("cannot snapshot: \(error.description)", .failure)
        }
        // A Full goes to a new file renamed into place: a guest restored from
        // an older file at that path keeps mapping the old one, never a
        // file truncated under it.
        let memoryTemporary = memoryPath + ".partial"
        let memory = diff ? open(memoryPath, O_WRONLY | O_CLOEXEC) : open(memoryTemporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard memory >= 0 else {
            throw SnapshotLoadFailure("cannot open the memory file \(diff ? memoryPath : memoryTemporary): \(String(cString: strerror(errno)))\(diff ? " (a Diff is written into its base snapshot's memory file)" : "")", .cannotCreate)
        }
        defer { close(memory) }
        do { try machine.saveMemory(to: memory, diff: diff) } catch {
            if !diff { unlink(memoryTemporary) }
            throw SnapshotLoadFailure("cannot write guest memory to \(memoryPath): \(error.description)", error.kind == .memorySize ? .snapshotMemorySize : .failure)
        }
        guard fsync(memory) == 0, diff || rename(memoryTemporary, memoryPath) == 0 else {
            let reason = String(cString: strerror(errno))
            if !diff { unlink(memoryTemporary) }
            throw SnapshotLoadFailure("cannot write \(memoryPath): \(reason)", .cannotCreate)
        }
        let temporary = statePath + ".partial"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SnapshotLoadFailure("cannot create the state file \(temporary): \(String(cString: strerror(errno)))", .cannotCreate) }
        let written = (try? FileDescriptor(rawValue: fd).writeAll(state.encoded())) != nil && fsync(fd) == 0
        close(fd)
        guard written, rename(temporary, statePath) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw SnapshotLoadFailure("cannot write the state file \(statePath): \(reason)", .cannotCreate)
        }
    }

    /// Reads and checks a state file and its machine's configuration.
    static func read(statePath: String) throws(SnapshotLoadFailure) -> (state: SnapshotState, configuration: SnapshotConfiguration) {
        let file: ImageSource
        do { file = try ImageSource(path: statePath) } catch {
            throw SnapshotLoadFailure("cannot read snapshot \(statePath): \(error.reason)", .noInput)
        }
        let magic = SnapshotState.magic
        if file.count < magic.count || file.read(0..<magic.count) != magic {
            throw SnapshotLoadFailure("snapshot \(statePath): \(SnapshotError.notASnapshot.description)", .notASnapshot)
        }
        guard file.count <= maxStateBytes else { throw SnapshotLoadFailure("snapshot \(statePath): larger than \(maxStateBytes >> 20) MiB, not a state file", .snapshotMalformed) }
        let state: SnapshotState
        do { state = try SnapshotState.decode(file.read(0..<file.count)) } catch {
            let status: ExitStatus = switch error {
            case .notASnapshot: .notASnapshot
            case .version: .snapshotVersion
            case .truncated: .snapshotTruncated
            case .corrupted: .snapshotCorrupted
            case .malformed: .snapshotMalformed
            }
            throw SnapshotLoadFailure("snapshot \(statePath): \(error.description)", status)
        }
        guard !state.configuration.isEmpty else { throw SnapshotLoadFailure("snapshot \(statePath): no machine configuration (CONF)", .snapshotMalformed) }
        do {
            return (state, try JSONDecoder().decode(SnapshotConfiguration.self, from: Data(state.configuration)))
        } catch {
            throw SnapshotLoadFailure("snapshot \(statePath): its machine configuration (CONF) is not svmm's", .snapshotMalformed)
        }
    }

    /// Builds the snapshot's machine and restores it (not started). The
    /// memory file is opened read-only and mapped privately: never written.
    static func restore(statePath: String, memoryPath: String, trackDirtyPages: Bool, kvmPath: String, started: UInt64,
                        output: ConsoleOutput, input: ConsoleInput, reportTime: Bool = false) throws(SnapshotLoadFailure)
        -> (LinuxMachine, MachineRequest, FullVmConfiguration?) {
        func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
        let t0 = now()
        let (state, configuration) = try read(statePath: statePath)
        let t1 = now()
        var request = try configuration.request(kvmPath: kvmPath)
        request.trackDirtyPages = trackDirtyPages
        let memory = open(memoryPath, O_RDONLY | O_CLOEXEC)
        guard memory >= 0 else { throw SnapshotLoadFailure("cannot read memory file \(memoryPath): \(String(cString: strerror(errno)))", .noInput) }
        defer { close(memory) }
        var st = stat()
        guard fstat(memory, &st) == 0, UInt64(st.st_size) == state.machine.ramBytes else {
            throw SnapshotLoadFailure("memory file \(memoryPath) is \(st.st_size) bytes; the snapshot's guest RAM is \(state.machine.ramBytes)", .snapshotMemorySize)
        }
        let machine: LinuxMachine
        do { machine = try request.build(started: started, output: output, input: input) } catch {
            throw SnapshotLoadFailure(error.message, error.status)
        }
        let t2 = now()
        defer {
            if reportTime {
                let t3 = now()
                func ms(_ a: UInt64, _ b: UInt64) -> String { "\((b - a) / 1_000_000).\((b - a) / 100_000 % 10)" }
                Messages.line("svmm: restored \(statePath) in \(ms(t0, t3)) ms: state file \(ms(t0, t1)) ms, "
                              + "machine built \(ms(t1, t2)) ms, memory mapped and state set \(ms(t2, t3)) ms")
            }
        }
        do { try machine.restore(state, memoryFile: memory) } catch {
            let status: ExitStatus = switch error.kind {
            case .memorySize: .snapshotMemorySize
            case .mismatch, .notAllowed: .snapshotMalformed
            case .host: .failure
            }
            throw SnapshotLoadFailure("cannot restore \(statePath): \(error.description)", status)
        }
        return (machine, request, configuration.api)
    }
}
