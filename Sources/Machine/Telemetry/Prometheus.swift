import Glibc
import KVM
import Synchronization

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

/// Serves `PrometheusText` over HTTP/1.0 on a Unix socket
/// (`curl --unix-socket PATH http://svmm/metrics`), one connection at a time.
public final class PrometheusEndpoint: Sendable {
    public let path: String
    private let listener: Int32
    private let render: @Sendable () -> String
    private let thread = Mutex<pthread_t?>(nil)
    private let stopping = Atomic<Bool>(false)

    public struct SetupError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Binds the socket. An existing socket at `path` is replaced; any other
    /// existing file is left alone and refused.
    public init(path: String, render: @escaping @Sendable () -> String) throws(SetupError) {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw SetupError(description: "--stats-listen \(path): a file that is not a socket is there; not replacing it")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SetupError(description: "--stats-listen: socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw SetupError(description: "--stats-listen \(path): path longer than a Unix socket allows (\(MemoryLayout.size(ofValue: address.sun_path) - 1) bytes)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(fd, 8) == 0 else {
            let e = errno
            close(fd)
            throw SetupError(description: "--stats-listen \(path): \(String(cString: strerror(e)))")
        }
        self.path = path
        listener = fd
        self.render = render
    }

    public func start() throws(KVMError) {
        let t = try startHostThread("the Prometheus endpoint") { [self] in serve() }
        thread.withLock { $0 = t }
    }

    private func serve() {
        while !stopping.load(ordering: .acquiring) {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            answer(client)
            close(client)
        }
    }

    private func answer(_ client: Int32) {
        // Read the request head (or give up after 2 s); any path gets the metrics.
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var request: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        while request.count < 16384 {
            let n = read(client, &buffer, buffer.count)
            if n <= 0 { break }
            request += buffer[0..<n]
            if request.count >= 4, request.suffix(4) == [13, 10, 13, 10] { break }
            if request.count >= 2, request.suffix(2) == [10, 10] { break }
        }
        let body = render()
        var response = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        response.withUTF8 { b in
            var done = 0
            while done < b.count {
                let n = send(client, b.baseAddress! + done, b.count - done, Int32(MSG_NOSIGNAL))
                if n <= 0 { return }
                done += n
            }
        }
    }

    /// Stops serving and removes the socket file.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        shutdown(listener, Int32(SHUT_RDWR))
        if let t = thread.withLock({ $0 }) { pthread_join(t, nil) }
        close(listener)
        unlink(path)
    }
}
