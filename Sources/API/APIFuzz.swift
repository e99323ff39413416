/// The fuzz target over the API (svmm-fuzz's `api`): the input is a byte
/// stream as a client would send it. Each request parsed from it goes
/// through the whole API (routing, body decoding, the rules) on a backend
/// that only records; the instance starts when a request asks. Requests that
/// would open host files to write (`PUT /metrics`, `PUT /logger`) have their
/// bodies decoded but are not applied: the fuzzer must not append to files.
public enum APIFuzz {
    final class NullBackend: APIBackend {
        func start(_ config: FullVmConfiguration) throws(HTTPError) {}
        var isPaused: Bool { false }
        func pause() {}
        func resume() {}
        func sendCtrlAltDel() throws(HTTPError) {}
        func prometheus() -> String { "" }
        func metricsLine() -> String { "{}" }
        func createSnapshot(diff: Bool, statePath: String, memoryPath: String, configuration: FullVmConfiguration) throws(HTTPError) {}
        func loadSnapshot(statePath: String, memoryPath: String, trackDirtyPages: Bool, resume: Bool) throws(HTTPError)
            -> (vcpus: Int, memoryMiB: Int, configuration: FullVmConfiguration?) { (1, 128, nil) }
    }

    public static func run(_ input: UnsafeRawBufferPointer) {
        let api = FirecrackerAPI(id: "fuzz", version: "0", backend: NullBackend())
        var buffer = Array(input)[...]
        while !buffer.isEmpty {
            switch HTTPParser.parse(buffer, maxBodyBytes: 4096) {
            case .incomplete:
                _ = HTTPParser.expectsContinue(buffer)
                return
            case let .failed(error):
                precondition((400...599).contains(error.status) && !error.message.isEmpty)
                _ = HTTPResponse.fault(error.status, error.message).serialized(close: true)
                return
            case let .request(request, consumed):
                precondition(consumed > 0 && consumed <= buffer.count)
                buffer = buffer.dropFirst(consumed)
                if request.path.hasPrefix("/metrics") || request.path.hasPrefix("/logger") {
                    _ = try? APIJSON.decode(Metrics.self, from: request.body)
                    _ = try? APIJSON.decode(Logger.self, from: request.body)
                    continue
                }
                let response = api.handle(request)
                precondition([200, 204, 400].contains(response.status), "status \(response.status)")
                if response.status == 400 { precondition((try? APIJSON.faultMessage(response.body)) != nil) }
                _ = try? APIJSON.decodeConfiguration(request.body)
            }
        }
    }
}
