import Glibc
import Synchronization
import VMCore
import Virtio

/// The target this process fuzzes (its index in `targetNames`: the virtio
/// targets, then the board's), chosen by `--target NAME` (Scripts/fuzz):
/// set once in main, before libFuzzer calls back.
let chosenTarget = Atomic<Int>(0)
let targetNames = FuzzTarget.allCases.map(\.rawValue) + BoardFuzzTarget.allCases.map(\.rawValue)
var targetName: String { targetNames[chosenTarget.load(ordering: .relaxed)] }

/// One input through the chosen target (libFuzzer's callback).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    // SAFETY: libFuzzer passes `size` readable bytes at `data`, valid for this call.
    let input = UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : size)
    if let t = FuzzTarget(rawValue: targetName) { t.run(input) } else { BoardFuzzTarget(rawValue: targetName)?.run(input) }
    return 0
}

#if FUZZING
/// libFuzzer's driver (in the runtime -sanitize=fuzzer links).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<Int32>,
                     _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                     _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32
#endif

/// svmm-fuzz --target NAME [libFuzzer flags and corpus directories]
/// svmm-fuzz --list: the targets' names (Scripts/fuzz reads them here).
/// Built by Scripts/fuzz (-sanitize=fuzzer -DFUZZING): runs libFuzzer on NAME.
/// A plain build replays the input files named after the target.
@main
struct FuzzMain {
    static func main() {
        var args = Array(CommandLine.arguments.dropFirst())
        if args == ["--list"] {
            for t in targetNames { print(t) }
            return
        }
        guard let i = args.firstIndex(of: "--target"), i + 1 < args.count, let t = targetNames.firstIndex(of: args[i + 1]) else {
            let names = targetNames.joined(separator: ", ")
            Messages.line("svmm-fuzz: usage: svmm-fuzz --target NAME [libFuzzer arguments]; NAME is one of \(names)")
            exit(64)
        }
        chosenTarget.store(t, ordering: .relaxed)
        args.removeSubrange(i...(i + 1))
        #if FUZZING
        // libFuzzer gets argv[0] and everything but --target NAME.
        var cArgs = ([CommandLine.arguments[0]] + args).map { strdup($0) } + [nil]
        var argc = Int32(cArgs.count - 1)
        cArgs.withUnsafeMutableBufferPointer { buffer in
            // SAFETY: argv points into cArgs, alive for this call; the strdup'd strings are never freed.
            var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buffer.baseAddress
            exit(runFuzzerDriver(&argc, &argv, fuzzOneInput))
        }
        #else
        for path in args {
            guard let f = fopen(path, "rb") else { Messages.line("svmm-fuzz: \(path): \(String(cString: strerror(errno)))"); exit(66) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while case let n = fread(&chunk, 1, chunk.count, f), n > 0 { bytes += chunk[0..<n] }
            fclose(f)
            bytes.withUnsafeBufferPointer { _ = fuzzOneInput($0.baseAddress, $0.count) }
        }
        print("replayed \(args.count) inputs on \(targetName)")
        #endif
    }
}
