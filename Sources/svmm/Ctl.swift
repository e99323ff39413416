import API
import ArgumentParser
import Glibc
import VMCore

/// A small client of `svmm serve`'s API for people: one request, its answer on stdout.
struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Drive a running `svmm serve` through its API socket.",
        discussion: """
            pause, resume: PATCH /vm. stop: ends svmm as SIGTERM does (the guest is
            stopped, svmm exits 143). config: GET /vm/config. metrics: GET /metrics
            (Prometheus text). info: GET /. snapshot: PUT /snapshot/create of the
            paused guest, with --snapshot-path and --mem-file-path (--diff: a Diff
            into the base snapshot's memory file).

            Exit status: 0 the call succeeded, 1 svmm answered with an error (its
            fault message on stderr), 69 no svmm answers on the socket.
            """
    )

    enum Action: String, ExpressibleByArgument, CaseIterable {
        case pause, resume, stop, config, metrics, info, snapshot
    }

    @Option(help: ArgumentHelp("The API socket of `svmm serve`.", valueName: "PATH"))
    var apiSock: String

    @Argument(help: "pause, resume, stop, config, metrics, info or snapshot.")
    var action: Action

    @Option(help: ArgumentHelp("snapshot: the state file to write.", valueName: "PATH"))
    var snapshotPath: String?

    @Option(help: ArgumentHelp("snapshot: the memory file to write (with --diff, the base snapshot's).", valueName: "PATH"))
    var memFilePath: String?

    @Flag(help: "snapshot: a Diff snapshot (the pages written since the last one).")
    var diff = false

    func validate() throws {
        if action == .snapshot {
            guard snapshotPath != nil, memFilePath != nil else { throw ValidationError("snapshot needs --snapshot-path and --mem-file-path") }
        } else if snapshotPath != nil || memFilePath != nil || diff {
            throw ValidationError("--snapshot-path, --mem-file-path and --diff are for snapshot")
        }
    }

    func run() throws {
        let (method, path, body): (String, String, String?) = switch action {
        case .pause: ("PATCH", "/vm", #"{"state": "Paused"}"#)
        case .resume: ("PATCH", "/vm", #"{"state": "Resumed"}"#)
        case .stop: ("GET", "/", nil)
        case .config: ("GET", "/vm/config", nil)
        case .metrics: ("GET", "/metrics", nil)
        case .info: ("GET", "/", nil)
        case .snapshot: ("PUT", "/snapshot/create", Self.json([
            "snapshot_type": diff ? "Diff" : "Full", "snapshot_path": snapshotPath ?? "", "mem_file_path": memFilePath ?? ""]))
        }
        if action == .stop {
            // svmm's own process, found through the socket (SO_PEERCRED): no API call of Firecracker's stops a VMM.
            let fd: Int32
            do { fd = try APIClient.connect(apiSock) } catch { fail("\(apiSock): \(error.description)", .kvmUnavailable) }
            defer { close(fd) }
            guard let pid = APIClient.peerPID(fd), pid > 0, kill(pid, SIGTERM) == 0 else {
                fail("\(apiSock): cannot signal the process serving it: \(String(cString: strerror(errno)))", .failure)
            }
            return
        }
        let response: (status: Int, body: [UInt8])
        do { response = try APIClient.request(socket: apiSock, method: method, path: path, body: body) } catch {
            fail("\(apiSock): \(error.description)", .kvmUnavailable)
        }
        if (200..<300).contains(response.status) {
            if !response.body.isEmpty { writeStdout(response.body + (response.body.last == 10 ? [] : [10])) }
            return
        }
        let text = String(decoding: response.body, as: UTF8.self)
        let fault = (try? APIJSON.faultMessage(response.body)) ?? text
        Messages.line("svmm ctl: \(response.status): \(fault)")
        throw ExitCode(ExitStatus.failure.rawValue)
    }

    /// A JSON object of string members (paths escaped as JSON strings).
    static func json(_ members: [String: String]) -> String {
        String(decoding: APIJSON.encode(members), as: UTF8.self)
    }
}
