import API
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
        do { listener = try UnixListener.bind(path: path, what: "--stats-listen") } catch {
            throw SetupError(description: error.description)
        }
        self.path = path
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
