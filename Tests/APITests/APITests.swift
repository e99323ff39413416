import API
import Foundation
import Synchronization
import Testing

/// A backend that records what the API asked of it.
final class RecordingBackend: APIBackend {
    let calls = Mutex<[String]>([])
    let started = Mutex<FullVmConfiguration?>(nil)
    let paused = Atomic<Bool>(false)
    let failStart: HTTPError?
    /// The configuration the last snapshot was given to record.
    let recorded = Mutex<FullVmConfiguration?>(nil)
    /// What a load says the snapshot recorded.
    let restores: FullVmConfiguration?

    init(failStart: HTTPError? = nil, restores: FullVmConfiguration? = nil) {
        self.failStart = failStart
        self.restores = restores
    }

    func start(_ config: FullVmConfiguration) throws(HTTPError) {
        calls.withLock { $0.append("start") }
        if let failStart { throw failStart }
        started.withLock { $0 = config }
    }
    var isPaused: Bool { paused.load(ordering: .acquiring) }
    func pause() { calls.withLock { $0.append("pause") }; paused.store(true, ordering: .releasing) }
    func resume() { calls.withLock { $0.append("resume") }; paused.store(false, ordering: .releasing) }
    func sendCtrlAltDel() throws(HTTPError) { calls.withLock { $0.append("ctrl-alt-del") } }
    func prometheus() -> String { "svmm_vcpus 1\n" }
    func metricsLine() -> String { #"{"utc_timestamp_ms":1}"# }
    func createSnapshot(diff: Bool, statePath: String, memoryPath: String, configuration: FullVmConfiguration) throws(HTTPError) {
        calls.withLock { $0.append("snapshot \(diff ? "Diff" : "Full") \(statePath) \(memoryPath)") }
        recorded.withLock { $0 = configuration }
    }
    func loadSnapshot(statePath: String, memoryPath: String, trackDirtyPages: Bool, resume: Bool) throws(HTTPError)
        -> (vcpus: Int, memoryMiB: Int, configuration: FullVmConfiguration?) {
        calls.withLock { $0.append("load \(statePath) \(memoryPath) track=\(trackDirtyPages) resume=\(resume)") }
        paused.store(!resume, ordering: .releasing)
        return (2, 256, restores)
    }
}

/// A kernel, an initrd and a disk image that exist, in a fresh directory.
struct Files {
    let dir: String
    init() throws {
        dir = NSTemporaryDirectory() + "svmm-api-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for name in ["vmlinux", "initrd", "rootfs.ext4", "data.img"] {
            FileManager.default.createFile(atPath: "\(dir)/\(name)", contents: Data(repeating: 0, count: 4096))
        }
    }
    func path(_ name: String) -> String { "\(dir)/\(name)" }
}

func request(_ method: String, _ path: String, _ body: String? = nil) -> HTTPRequest {
    HTTPRequest(method: method, path: path, body: Array((body ?? "").utf8))
}

func fault(_ r: HTTPResponse) -> String {
    (try? APIJSON.faultMessage(r.body)) ?? "(no fault message: \(String(decoding: r.body, as: UTF8.self)))"
}

@Suite struct HTTPParserTests {
    func parse(_ text: String, max: Int = HTTPParser.defaultMaxBodyBytes) -> HTTPParse {
        HTTPParser.parse(Array(text.utf8)[...], maxBodyBytes: max)
    }

    @Test func aWholeRequestWithItsBody() {
        let text = "PUT /boot-source?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Type: application/json\r\n\r\n{}\r\n"
        guard case let .request(r, consumed) = parse(text) else { Issue.record("\(parse(text))"); return }
        #expect(r.method == "PUT" && r.path == "/boot-source" && r.body == Array("{}\r\n".utf8) && consumed == text.utf8.count)
        #expect(r.headers["content-type"] == "application/json" && r.keepAlive)
    }

    @Test func partsOfARequestAreIncompleteAtEveryCut() {
        let text = "PUT /vm HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"state\": \"Paused\"}\n"
        let bytes = Array(text.utf8)
        for cut in 0..<bytes.count { #expect(HTTPParser.parse(bytes[0..<cut]) == .incomplete, "cut at \(cut)") }
        guard case .request = HTTPParser.parse(bytes[...]) else { Issue.record("whole request not parsed"); return }
    }

    @Test func twoRequestsInOneBufferComeOneAfterTheOther() {
        let one = "GET / HTTP/1.1\r\n\r\n", two = "GET /version HTTP/1.1\r\n\r\n"
        let bytes = Array((one + two).utf8)
        guard case let .request(first, consumed) = HTTPParser.parse(bytes[...]),
              case let .request(second, _) = HTTPParser.parse(bytes[consumed...]) else { Issue.record("not two requests"); return }
        #expect(first.path == "/" && second.path == "/version")
    }

    @Test(arguments: [
        ("GARBAGE\r\n\r\n", 400), ("GET / HTTP/2.0\r\n\r\n", 505), ("get / HTTP/1.1\r\n\r\n", 400),
        ("GET nopath HTTP/1.1\r\n\r\n", 400), ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: x1\r\n\r\n", 400), ("PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", 400),
    ])
    func malformedRequestsAreRefused(text: String, status: Int) {
        guard case let .failed(e) = parse(text) else { Issue.record("accepted: \(text)"); return }
        #expect(e.status == status, "\(text): \(e.message)")
    }

    @Test func anOversizedBodyIsRefusedBeforeItArrives() {
        guard case let .failed(e) = parse("PUT /drives/a HTTP/1.1\r\nContent-Length: 51201\r\n\r\n") else { Issue.record("accepted"); return }
        #expect(e.message == "Request payload with size 51201 is larger than the limit of 51200 allowed by server.")
        guard case .failed = parse("PUT / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", max: 10) else { Issue.record("limit not kept"); return }
    }

    @Test func anEndlessHeadIsRefused() {
        guard case .failed = parse("GET / HTTP/1.1\r\n" + String(repeating: "X-A: b\r\n", count: 2000)) else { Issue.record("accepted"); return }
    }

    @Test func http10ClosesUnlessAskedToKeepAlive() {
        guard case let .request(r, _) = parse("GET / HTTP/1.0\r\n\r\n"),
              case let .request(k, _) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
              case let .request(c, _) = parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n") else { Issue.record("not parsed"); return }
        #expect(!r.keepAlive && k.keepAlive && !c.keepAlive)
    }

    @Test func aResponseCarriesItsLengthAndA204None() {
        let text = String(decoding: HTTPResponse.fault(400, "bad").serialized(), as: UTF8.self)
        #expect(text == "HTTP/1.1 400 Bad Request\r\nServer: svmm\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n{\"fault_message\":\"bad\"}" || text.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(text.hasSuffix("\r\n\r\n{\"fault_message\":\"bad\"}") && text.contains("Content-Length: 23\r\n"))
        #expect(String(decoding: HTTPResponse.noContent.serialized(close: true), as: UTF8.self)
                == "HTTP/1.1 204 No Content\r\nServer: svmm\r\nConnection: close\r\n\r\n")
    }
}

@Suite struct FirecrackerAPITests {
    func api(_ backend: RecordingBackend = RecordingBackend()) -> FirecrackerAPI {
        FirecrackerAPI(id: "test-vm", version: "0.1.0", backend: backend)
    }

    @Test func instanceInfoAndVersion() throws {
        let a = api()
        let info = try JSONDecoder().decode(InstanceInfo.self, from: Data(a.handle(request("GET", "/")).body))
        #expect(info.app_name == "svmm" && info.id == "test-vm" && info.state == "Not started" && info.vmm_version == "0.1.0")
        let v = try JSONDecoder().decode(FirecrackerVersion.self, from: Data(a.handle(request("GET", "/version")).body))
        #expect(v.firecracker_version == "0.1.0")
    }

    @Test func machineConfigStartsAtFirecrackersDefaultsAndTakesPutAndPatch() throws {
        let a = api()
        func get() throws -> MachineConfiguration { try JSONDecoder().decode(MachineConfiguration.self, from: Data(a.handle(request("GET", "/machine-config")).body)) }
        let initial = try get()
        #expect(initial.vcpu_count == 1 && initial.mem_size_mib == 128)
        #expect(a.handle(request("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256}"#)).status == 204)
        #expect(a.handle(request("PATCH", "/machine-config", #"{"mem_size_mib": 512}"#)).status == 204)
        let patched = try get()
        #expect(patched.vcpu_count == 2 && patched.mem_size_mib == 512)
        // A bad PATCH changes nothing.
        let bad = a.handle(request("PATCH", "/machine-config", #"{"mem_size_mib": 64, "vcpu_count": 33}"#))
        #expect(bad.status == 400 && fault(bad).contains("vCPU number is invalid"))
        let after = try get()
        #expect(after.vcpu_count == 2 && after.mem_size_mib == 512)
    }

    /// The getting-started sequence: every PUT answered 204, the start gets
    /// the configuration, and after it the pre-boot calls are refused.
    @Test func gettingStartedThenPreBootCallsAreRefused() throws {
        let f = try Files(), backend = RecordingBackend(), a = api(backend)
        let calls: [(String, String, String)] = [
            ("PUT", "/boot-source", #"{"kernel_image_path": "\#(f.path("vmlinux"))", "boot_args": "console=ttyS0 reboot=k panic=1", "initrd_path": "\#(f.path("initrd"))"}"#),
            ("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 1024}"#),
            ("PUT", "/drives/rootfs", #"{"drive_id": "rootfs", "path_on_host": "\#(f.path("rootfs.ext4"))", "is_root_device": true, "is_read_only": false}"#),
            ("PUT", "/drives/data", #"{"drive_id": "data", "path_on_host": "\#(f.path("data.img"))", "is_root_device": false, "is_read_only": true, "cache_type": "Writeback"}"#),
            ("PUT", "/network-interfaces/net1", #"{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}"#),
            ("PUT", "/entropy", #"{}"#),
        ]
        for (m, p, b) in calls {
            let r = a.handle(request(m, p, b))
            #expect(r.status == 204, "\(m) \(p): \(fault(r))")
        }
        #expect(a.handle(request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)).status == 204)
        let started = try #require(backend.started.withLock { $0 })
        #expect(started.boot_source?.boot_args == "console=ttyS0 reboot=k panic=1")
        #expect(started.machine_config?.vcpu_count == 2 && started.drives?.map(\.drive_id) == ["rootfs", "data"])
        #expect(started.network_interfaces?.first?.guest_mac == "06:00:AC:10:00:02" && started.entropy != nil)
        #expect(a.state == .running)
        for (m, p, b) in calls + [("PUT", "/actions", #"{"action_type": "InstanceStart"}"#), ("PATCH", "/machine-config", #"{"vcpu_count": 1}"#)] {
            let r = a.handle(request(m, p, b))
            #expect(r.status == 400 && fault(r) == "The requested operation is not supported after starting the microVM.", "\(m) \(p)")
        }
        // What GET /vm/config shows is what was configured.
        let config = try JSONDecoder().decode(FullVmConfiguration.self, from: Data(a.handle(request("GET", "/vm/config")).body))
        #expect(config == started)
        #expect(backend.calls.withLock { $0 } == ["start"])
    }

    @Test func pauseAndResumeAfterTheStartOnly() throws {
        let f = try Files(), backend = RecordingBackend(), a = api(backend)
        let before = a.handle(request("PATCH", "/vm", #"{"state": "Paused"}"#))
        #expect(before.status == 400 && fault(before) == "The requested operation is not supported before starting the microVM.")
        #expect(a.handle(request("PUT", "/boot-source", #"{"kernel_image_path": "\#(f.path("vmlinux"))"}"#)).status == 204)
        #expect(a.handle(request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)).status == 204)
        #expect(a.handle(request("PATCH", "/vm", #"{"state": "Paused"}"#)).status == 204)
        #expect(a.state == .paused)
        #expect(try JSONDecoder().decode(InstanceInfo.self, from: Data(a.handle(request("GET", "/")).body)).state == "Paused")
        #expect(a.handle(request("PATCH", "/vm", #"{"state": "Resumed"}"#)).status == 204)
        #expect(a.state == .running)
        let bad = a.handle(request("PATCH", "/vm", #"{"state": "Frozen"}"#))
        #expect(bad.status == 400 && fault(bad).contains("unknown variant `Frozen`"))
        #expect(backend.calls.withLock { $0 } == ["start", "pause", "resume"])
    }

    @Test func aStartTheMachineRefusesLeavesTheInstanceNotStarted() throws {
        let f = try Files(), a = api(RecordingBackend(failStart: HTTPError(status: 400, "Cannot start the microVM: no TAP tap9")))
        #expect(a.handle(request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)).status == 400)   // no boot source
        #expect(a.handle(request("PUT", "/boot-source", #"{"kernel_image_path": "\#(f.path("vmlinux"))"}"#)).status == 204)
        let r = a.handle(request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#))
        #expect(r.status == 400 && fault(r) == "Cannot start the microVM: no TAP tap9" && a.state == .notStarted)
    }

    /// Each bad request gets a 400 with a fault message and changes nothing.
    @Test(arguments: [
        ("PUT", "/boot-source", #"{"kernel_image_path": "/nonexistent/vmlinux"}"#, "The kernel file cannot be opened"),
        ("PUT", "/boot-source", #"{"kernel_image_path": "K", "unknown": 1}"#, "unknown field `unknown`"),
        ("PUT", "/boot-source", #"{"kernel_image_path": 7}"#, "invalid type at `kernel_image_path`"),
        ("PUT", "/boot-source", #"{"boot_args": "x"}"#, "missing field `kernel_image_path`"),
        ("PUT", "/boot-source", #"{"kernel_image_path": "#, "not valid JSON"),
        ("PUT", "/boot-source", #"["K"]"#, "expected a JSON object"),
        ("PUT", "/boot-source", "", "Empty request body"),
        ("PUT", "/machine-config", #"{"vcpu_count": 0, "mem_size_mib": 128}"#, "vCPU number is invalid"),
        ("PUT", "/machine-config", #"{"vcpu_count": 1, "mem_size_mib": 128, "smt": true}"#, "SMT"),
        ("PUT", "/machine-config", #"{"vcpu_count": 1}"#, "missing field `mem_size_mib`"),
        ("PUT", "/drives/a", #"{"drive_id": "b", "path_on_host": "D", "is_root_device": false}"#, "does not match"),
        ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "/nonexistent", "is_root_device": false}"#, "cannot be opened"),
        ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "D", "is_root_device": false, "cache_type": "Fast"}"#, "unknown variant `Fast`"),
        ("PUT", "/drives/a", #"{"drive_id": "a", "path_on_host": "D", "is_root_device": false, "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#, "no rate limiters"),
        ("PUT", "/drives/a b", #"{"drive_id": "a b", "path_on_host": "D", "is_root_device": false}"#, "Invalid ID"),
        ("PUT", "/network-interfaces/n", #"{"iface_id": "n", "host_dev_name": "tap0", "guest_mac": "zz"}"#, "Invalid guest_mac"),
        ("PUT", "/network-interfaces/n", #"{"iface_id": "n", "host_dev_name": "a-name-far-too-long"}"#, "Invalid host_dev_name"),
        ("PUT", "/actions", #"{"action_type": "Reboot"}"#, "unknown variant `Reboot`"),
        ("PUT", "/actions", #"{"action_type": "SendCtrlAltDel"}"#, "before starting"),
        ("PUT", "/metrics", #"{"metrics_path": "/nonexistent/metrics"}"#, "cannot be opened"),
        ("PUT", "/logger", #"{"level": "Loud"}"#, "Invalid log level"),
        ("GET", "/nothing-here", "", "Invalid request method and/or path: GET /nothing-here."),
        ("DELETE", "/boot-source", "", "Invalid request method and/or path"),
        ("POST", "/actions", #"{"action_type": "InstanceStart"}"#, "Invalid request method and/or path"),
    ])
    func badRequestsGetAFaultAndChangeNothing(method: String, path: String, body: String, expected: String) throws {
        let f = try Files(), backend = RecordingBackend(), a = api(backend)
        let before = a.configuration
        let r = a.handle(request(method, path, body.replacingOccurrences(of: "\"D\"", with: "\"\(f.path("data.img"))\"")))
        #expect(r.status == 400, "\(method) \(path)")
        #expect(fault(r).contains(expected), "\(fault(r))")
        #expect(a.configuration == before && backend.calls.withLock { $0 }.isEmpty)
    }

    @Test func oneRootDeviceOnly() throws {
        let f = try Files(), a = api()
        #expect(a.handle(request("PUT", "/drives/r1", #"{"drive_id": "r1", "path_on_host": "\#(f.path("rootfs.ext4"))", "is_root_device": true}"#)).status == 204)
        let r = a.handle(request("PUT", "/drives/r2", #"{"drive_id": "r2", "path_on_host": "\#(f.path("data.img"))", "is_root_device": true}"#))
        #expect(r.status == 400 && fault(r) == "A root block device already exists!")
        // Updating the same drive is allowed.
        #expect(a.handle(request("PUT", "/drives/r1", #"{"drive_id": "r1", "path_on_host": "\#(f.path("data.img"))", "is_root_device": true}"#)).status == 204)
        #expect(a.configuration.drives?.map(\.path_on_host) == [f.path("data.img")])
    }

    @Test func metricsFileGetsALinePerFlushAndIsNeverCreated() throws {
        let f = try Files(), a = api()
        let missing = f.path("metrics.json")
        #expect(a.handle(request("PUT", "/metrics", #"{"metrics_path": "\#(missing)"}"#)).status == 400)
        #expect(!FileManager.default.fileExists(atPath: missing))
        FileManager.default.createFile(atPath: missing, contents: Data())
        #expect(a.handle(request("PUT", "/metrics", #"{"metrics_path": "\#(missing)"}"#)).status == 204)
        #expect(a.handle(request("PUT", "/metrics", #"{"metrics_path": "\#(missing)"}"#)).status == 400)   // once only
        #expect(a.handle(request("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#)).status == 204)
        #expect(a.handle(request("PUT", "/actions", #"{"action_type": "FlushMetrics"}"#)).status == 204)
        #expect(try String(contentsOfFile: missing, encoding: .utf8) == "{\"utc_timestamp_ms\":1}\n{\"utc_timestamp_ms\":1}\n")
        let metrics = a.handle(request("GET", "/metrics"))
        #expect(metrics.status == 200 && metrics.contentType.hasPrefix("text/plain") && metrics.body == Array("svmm_vcpus 1\n".utf8))
    }

    @Test func aConfigurationFileIsCheckedSectionBySection() throws {
        let f = try Files()
        let good = #"{"boot-source": {"kernel_image_path": "\#(f.path("vmlinux"))"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}, "drives": [], "network-interfaces": []}"#
        let config = try APIJSON.decodeConfiguration(Array(good.utf8))
        #expect(config.machine_config?.vcpu_count == 2)
        for (text, expected) in [
            (#"{"boot-source": {"kernel_image_path": "K", "extra": 1}}"#, "unknown field `extra` in `boot-source`"),
            (#"{"drives": [{"drive_id": "a", "is_root_device": true, "bad": 1}]}"#, "unknown field `bad` in `drives`"),
            (#"{"balloon": {}}"#, "unknown field `balloon`"),
        ] {
            #expect(throws: HTTPError.self) { try APIJSON.decodeConfiguration(Array(text.utf8)) }
            do { _ = try APIJSON.decodeConfiguration(Array(text.utf8)) } catch { #expect(error.message.contains(expected), "\(error.message)") }
        }
        let backend = RecordingBackend(), a = api(backend)
        try a.configure(config)
        #expect(a.state == .running && backend.started.withLock { $0 }?.machine_config?.mem_size_mib == 256)
    }
}

/// The server on a real socket: clients that stall or leave do not hold up others.
@Suite struct APIServerTests {
    func withServer(_ body: (String) throws -> Void) throws {
        let f = try Files()
        let path = f.path("api.sock")
        let listener = try UnixListener.bind(path: path, what: "test")
        let api = FirecrackerAPI(id: "s", version: "0.1.0", backend: RecordingBackend())
        let server = APIServer(listener: listener, path: path, maxBodyBytes: 1024) { api.handle($0) }
        try server.start()
        defer { server.stop() }
        try body(path)
    }

    func get(_ path: String) throws -> Int {
        try APIClient.request(socket: path, method: "GET", path: "/", body: nil).status
    }

    @Test func silentPartialAndVanishingClientsStallNoOne() throws {
        try withServer { path in
            let silent = try APIClient.connect(path)
            defer { close(silent) }
            let partial = try APIClient.connect(path)
            defer { close(partial) }
            _ = "PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"vcpu".withCString { send(partial, $0, strlen($0), 0) }
            let gone = try APIClient.connect(path)
            _ = "PUT /boot-source HTTP/1.1\r\nContent-Len".withCString { send(gone, $0, strlen($0), 0) }
            close(gone)
            for _ in 0..<5 {
                let status = try get(path)
                #expect(status == 200)
            }
        }
    }

    @Test func keepAliveAnswersEachRequestInOrder() throws {
        try withServer { path in
            let fd = try APIClient.connect(path)
            defer { close(fd) }
            let two = "GET /version HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\n\r\n"
            _ = two.withCString { send(fd, $0, strlen($0), 0) }
            var answer = ""
            var chunk = [UInt8](repeating: 0, count: 4096)
            while answer.components(separatedBy: "HTTP/1.1 ").count < 3 {
                let n = recv(fd, &chunk, chunk.count, 0)
                if n <= 0 { break }
                answer += String(decoding: chunk[0..<n], as: UTF8.self)
            }
            let statuses = answer.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
            #expect(statuses == ["200", "400"], "\(answer)")
        }
    }

    @Test func anOversizedBodyIsAnsweredAndTheServerGoesOn() throws {
        try withServer { path in
            let big = String(repeating: "x", count: 2000)
            let r = try APIClient.request(socket: path, method: "PUT", path: "/boot-source", body: big)
            #expect(r.status == 400 && fault(HTTPResponse(status: r.status, body: r.body)) == "Request payload with size 2000 is larger than the limit of 1024 allowed by server.")
            let after = try get(path)
            #expect(after == 200)
        }
    }

    @Test func manyClientsInTurn() throws {
        try withServer { path in
            for _ in 0..<50 {
                let status = try get(path)
                #expect(status == 200)
            }
        }
    }

    @Test func aFileThatIsNotASocketIsNotReplaced() throws {
        let f = try Files()
        #expect(throws: UnixListener.SetupError.self) { try UnixListener.bind(path: f.path("data.img"), what: "--api-sock") }
        #expect(FileManager.default.fileExists(atPath: f.path("data.img")))
    }
}

/// The `api` fuzz target's corpus (Tests/Fuzz/corpus/api: seeds, and each
/// crash the fuzzer finds, kept once fixed) goes through it again.
@Suite struct APIFuzzCorpusTests {
    @Test func theAPICorpusReplaysWithoutACrash() throws {
        let corpus = String(#filePath.dropLast("APITests/APITests.swift".count)) + "Fuzz/corpus/api"
        let files = try FileManager.default.contentsOfDirectory(atPath: corpus).filter { !$0.hasPrefix(".") }
        #expect(files.count >= 8, "\(files)")
        for file in files {
            let bytes = try Data(contentsOf: URL(fileURLWithPath: corpus + "/" + file))
            bytes.withUnsafeBytes { APIFuzz.run($0) }
        }
    }

    @Test func expectContinueIsSeenOnceTheHeadIsWhole() {
        let head = Array("PUT /drives/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n".utf8)
        #expect(HTTPParser.expectsContinue(head[...]))
        #expect(!HTTPParser.expectsContinue(head.dropLast(2)))
        #expect(!HTTPParser.expectsContinue(Array("PUT / HTTP/1.1\r\nContent-Length: 2\r\n\r\n".utf8)[...]))
    }
}

/// The snapshot calls' rules: create only on a paused guest (Diff only with
/// tracking), load only on a fresh instance; each refusal a 400 that asks
/// nothing of the machine.
@Suite struct SnapshotAPITests {
    @Test func createNeedsAPausedGuestAndDiffNeedsTracking() throws {
        let files = try Files()
        let backend = RecordingBackend()
        let api = FirecrackerAPI(id: "t", version: "0", backend: backend)
        let create = #"{"snapshot_type": "Full", "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#
        #expect(fault(api.handle(request("PUT", "/snapshot/create", create))).contains("before starting"))
        #expect(api.handle(request("PUT", "/boot-source", #"{"kernel_image_path": "\#(files.path("vmlinux"))"}"#)).status == 204)
        #expect(api.handle(request("PUT", "/actions", #"{"action_type": "InstanceStart"}"#)).status == 204)
        #expect(fault(api.handle(request("PUT", "/snapshot/create", create))).contains("must be paused"))
        #expect(api.handle(request("PATCH", "/vm", #"{"state": "Paused"}"#)).status == 204)
        #expect(fault(api.handle(request("PUT", "/snapshot/create", #"{"snapshot_type": "Diff", "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#)))
                .contains("dirty page tracking disabled"))
        #expect(fault(api.handle(request("PUT", "/snapshot/create", #"{"snapshot_type": "Half", "snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#)))
                .contains("unknown variant `Half`"))
        #expect(fault(api.handle(request("PUT", "/snapshot/create", #"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m", "version": "1.0.0"}"#)))
                .contains("leave version out"))
        #expect(fault(api.handle(request("PUT", "/snapshot/create", #"{"snapshot_path": "/tmp/s"}"#))).contains("missing field `mem_file_path`"))
        #expect(!backend.calls.withLock { $0 }.contains { $0.hasPrefix("snapshot") })
        #expect(api.handle(request("PUT", "/snapshot/create", create)).status == 204)
        #expect(backend.calls.withLock { $0 }.last == "snapshot Full /tmp/s /tmp/m")
    }

    @Test func loadIsForAFreshInstanceWithAFileBackend() throws {
        let backend = RecordingBackend()
        let api = FirecrackerAPI(id: "t", version: "0", backend: backend)
        let bad: [(String, String)] = [
            (#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/sock"}}"#, "backend_type must be File"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#, "exactly one"),
            (#"{"snapshot_path": "/s"}"#, "exactly one"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}]}"#, "network_overrides"),
            (#"{"snapshot_path": "/s", "mem_file_path": "/m", "extra": 1}"#, "unknown field `extra`"),
        ]
        for (body, says) in bad { #expect(fault(api.handle(request("PUT", "/snapshot/load", body))).contains(says), "\(body)") }
        #expect(backend.calls.withLock { $0 }.isEmpty && api.state == .notStarted)
        let load = #"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "track_dirty_pages": true}"#
        #expect(api.handle(request("PUT", "/snapshot/load", load)).status == 204)
        #expect(backend.calls.withLock { $0 } == ["load /s /m track=true resume=false"])
        #expect(api.state == .paused)                                    // resume_vm absent: paused
        let machine = String(decoding: api.handle(request("GET", "/machine-config")).body, as: UTF8.self)
        #expect(machine.contains(#""vcpu_count":2"#) && machine.contains(#""mem_size_mib":256"#) && machine.contains(#""track_dirty_pages":true"#), "\(machine)")
        #expect(fault(api.handle(request("PUT", "/snapshot/load", load))).contains("not supported after starting"))
        let configured = FirecrackerAPI(id: "t", version: "0", backend: RecordingBackend())
        #expect(configured.handle(request("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256}"#)).status == 204)
        #expect(fault(configured.handle(request("PUT", "/snapshot/load", load))).contains("after configuring boot-specific resources"))
    }

    /// A snapshot records the instance's configuration (not its logger or
    /// metrics, which belong to a process), and an instance restored from it
    /// shows it at `GET /vm/config`, as Firecracker does since its 1.1.
    @Test func aRestoredInstanceShowsTheConfigurationItWasMadeWith() throws {
        let files = try Files()
        FileManager.default.createFile(atPath: files.path("metrics"), contents: nil)
        let backend = RecordingBackend()
        let api = FirecrackerAPI(id: "t", version: "0", backend: backend)
        let setup = [
            ("PUT", "/boot-source", #"{"kernel_image_path": "\#(files.path("vmlinux"))", "boot_args": "console=ttyS0"}"#),
            ("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": true}"#),
            ("PUT", "/drives/data", #"{"drive_id": "data", "path_on_host": "\#(files.path("data.img"))", "is_root_device": false}"#),
            ("PUT", "/network-interfaces/eth0", #"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}"#),
            ("PUT", "/metrics", #"{"metrics_path": "\#(files.path("metrics"))"}"#),
            ("PUT", "/actions", #"{"action_type": "InstanceStart"}"#),
            ("PATCH", "/vm", #"{"state": "Paused"}"#),
            ("PUT", "/snapshot/create", #"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#),
        ]
        for (method, path, body) in setup {
            let r = api.handle(request(method, path, body))
            #expect(r.status == 204, "\(method) \(path): \(fault(r))")
        }
        var expected = api.configuration
        #expect(expected.metrics != nil && expected.drives?.count == 1 && expected.network_interfaces?.count == 1)
        expected.metrics = nil
        #expect(backend.recorded.withLock { $0 } == expected)

        let restored = FirecrackerAPI(id: "r", version: "0", backend: RecordingBackend(restores: expected))
        let load = #"{"snapshot_path": "/tmp/s", "mem_backend": {"backend_type": "File", "backend_path": "/tmp/m"}, "resume_vm": true}"#
        #expect(restored.handle(request("PUT", "/snapshot/load", load)).status == 204)
        let shown = try JSONDecoder().decode(FullVmConfiguration.self, from: Data(restored.handle(request("GET", "/vm/config")).body))
        #expect(shown.drives == expected.drives && shown.network_interfaces == expected.network_interfaces)
        #expect(shown.boot_source == expected.boot_source)
        #expect(shown.machine_config?.vcpu_count == 2 && shown.machine_config?.track_dirty_pages == false, "\(String(describing: shown.machine_config))")
        // A snapshot that recorded none (made before svmm kept it): the machine only.
        let older = FirecrackerAPI(id: "o", version: "0", backend: RecordingBackend())
        #expect(older.handle(request("PUT", "/snapshot/load", load)).status == 204)
        let bare = try JSONDecoder().decode(FullVmConfiguration.self, from: Data(older.handle(request("GET", "/vm/config")).body))
        #expect(bare.drives == nil && bare.machine_config?.mem_size_mib == 256)
    }
}

