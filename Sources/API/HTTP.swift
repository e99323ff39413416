/// The HTTP/1.1 that the Firecracker API is spoken in: requests with a
/// Content-Length body (no chunked bodies), keep-alive by default, and the
/// limits Firecracker keeps (a 51200-byte body unless configured otherwise).
/// Everything here is pure: bytes in, a request or an error out.
public struct HTTPRequest: Sendable, Equatable {
    public var method: String
    /// The path without the query string.
    public var path: String
    /// Header names in lower case.
    public var headers: [String: String]
    public var body: [UInt8]
    /// "HTTP/1.1" or "HTTP/1.0".
    public var version: String

    public init(method: String, path: String, headers: [String: String] = [:], body: [UInt8] = [], version: String = "HTTP/1.1") {
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.version = version
    }

    /// HTTP/1.1 keeps the connection unless the client says `close`; 1.0 only when it says `keep-alive`.
    public var keepAlive: Bool {
        let connection = headers["connection"]?.lowercased()
        return version == "HTTP/1.1" ? connection != "close" : connection == "keep-alive"
    }
}

/// A request that cannot be parsed: the status and the fault message it gets.
public struct HTTPError: Error, Sendable, Equatable {
    public var status: Int
    public var message: String
    public init(status: Int, _ message: String) {
        self.status = status
        self.message = message
    }
}

public enum HTTPParse: Sendable, Equatable {
    /// More bytes are needed (none of the limits is passed yet).
    case incomplete
    /// A whole request, which took the first `consumed` bytes.
    case request(HTTPRequest, consumed: Int)
    /// The bytes cannot become a request; the connection is answered and closed.
    case failed(HTTPError)
}

public enum HTTPParser {
    /// The request line and headers together.
    public static let maxHeadBytes = 8192
    /// Firecracker's default `--http-api-max-payload-size`.
    public static let defaultMaxBodyBytes = 51200

    static let crlfcrlf: [UInt8] = [13, 10, 13, 10]

    /// Parses the request at the start of `buffer`.
    public static func parse(_ buffer: ArraySlice<UInt8>, maxBodyBytes: Int = defaultMaxBodyBytes) -> HTTPParse {
        guard let headEnd = find(crlfcrlf, in: buffer) else {
            if buffer.count > maxHeadBytes { return .failed(HTTPError(status: 400, "The request head is longer than \(maxHeadBytes) bytes.")) }
            return .incomplete
        }
        guard headEnd - buffer.startIndex <= maxHeadBytes else {
            return .failed(HTTPError(status: 400, "The request head is longer than \(maxHeadBytes) bytes."))
        }
        guard let head = String(validating: buffer[buffer.startIndex..<headEnd], as: UTF8.self) else {
            return .failed(HTTPError(status: 400, "The request head is not UTF-8."))
        }
        let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
        let requestLine = lines[0].split(separator: " ", omittingEmptySubsequences: false)
        guard requestLine.count == 3, !requestLine[0].isEmpty, requestLine[1].hasPrefix("/") else {
            return .failed(HTTPError(status: 400, "Invalid request line: \(lines[0].prefix(80))"))
        }
        guard requestLine[2] == "HTTP/1.1" || requestLine[2] == "HTTP/1.0" else {
            return .failed(HTTPError(status: 505, "Unsupported HTTP version: \(requestLine[2].prefix(16))"))
        }
        guard requestLine[0].allSatisfy({ $0.isASCII && $0.isUppercase }) else {
            return .failed(HTTPError(status: 400, "Invalid request method: \(requestLine[0].prefix(16))"))
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex,
                  !line[..<colon].contains(where: { $0 == " " || $0 == "\t" }) else {
                return .failed(HTTPError(status: 400, "Invalid header line: \(line.prefix(80))"))
            }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingSpaces
            if name == "content-length", let earlier = headers[name], earlier != value {
                return .failed(HTTPError(status: 400, "Conflicting Content-Length headers."))
            }
            headers[name] = value
        }
        if let te = headers["transfer-encoding"], te.lowercased() != "identity" {
            return .failed(HTTPError(status: 400, "Transfer-Encoding '\(te.prefix(32))' is not supported: send a Content-Length."))
        }
        var length = 0
        if let text = headers["content-length"] {
            guard !text.isEmpty, text.allSatisfy(\.isASCII), text.allSatisfy(\.isNumber), let n = Int(text) else {
                return .failed(HTTPError(status: 400, "Invalid Content-Length: \(text.prefix(32))"))
            }
            length = n
        }
        guard length <= maxBodyBytes else {
            return .failed(HTTPError(status: 400, "Request payload with size \(length) is larger than the limit of \(maxBodyBytes) allowed by server."))
        }
        let bodyStart = headEnd + 4
        guard buffer.endIndex - bodyStart >= length else { return .incomplete }
        let target = requestLine[1]
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        let request = HTTPRequest(method: String(requestLine[0]), path: String(path), headers: headers,
                                  body: Array(buffer[bodyStart..<(bodyStart + length)]), version: String(requestLine[2]))
        return .request(request, consumed: bodyStart + length - buffer.startIndex)
    }

    /// Whether the request at the start of `buffer` has its whole head,
    /// asks `Expect: 100-continue`, and waits for its body.
    public static func expectsContinue(_ buffer: ArraySlice<UInt8>) -> Bool {
        guard let headEnd = find(crlfcrlf, in: buffer),
              let head = String(validating: buffer[buffer.startIndex..<headEnd], as: UTF8.self) else { return false }
        return head.lowercased().split(separator: "\r\n").contains { line in
            line.hasPrefix("expect:") && line.dropFirst(7).trimmingSpaces == "100-continue"
        }
    }

    /// The index where `needle` starts in `haystack`, if it does.
    static func find(_ needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var i = haystack.startIndex
        while i <= haystack.endIndex - needle.count {
            if haystack[i] == needle[0], haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}

public struct HTTPResponse: Sendable, Equatable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]

    public init(status: Int, body: [UInt8] = [], contentType: String = "application/json") {
        self.status = status
        self.body = body
        self.contentType = contentType
    }

    /// 204: what every successful PUT and PATCH gets.
    public static let noContent = HTTPResponse(status: 204)

    /// An error with Firecracker's body: `{"fault_message": "..."}`.
    public static func fault(_ status: Int, _ message: String) -> HTTPResponse {
        HTTPResponse(status: status, body: APIJSON.encode(Fault(fault_message: message)))
    }

    static func reason(_ status: Int) -> String {
        switch status {
        case 100: "Continue"
        case 200: "OK"
        case 204: "No Content"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 500: "Internal Server Error"
        case 505: "HTTP Version Not Supported"
        default: "Status"
        }
    }

    /// The bytes on the wire. `close` adds `Connection: close`.
    public func serialized(close: Bool = false) -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\nServer: svmm\r\n"
        if status != 204 {
            head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        }
        if close { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (status == 204 ? [] : body)
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}
