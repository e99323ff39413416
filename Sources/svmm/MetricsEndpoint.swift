import Stats
import VMCore
import Glibc
import Synchronization
import VMCore

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

    public func start() throws(HostError) {
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
