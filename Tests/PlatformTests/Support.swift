import Foundation
import Testing

/// The checkout this test binary was built from.
let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

func repoPath(_ relative: String) -> String { repo.appendingPathComponent(relative).path }

/// The svmm built by `swift build` (the test command builds it first).
var svmmPath: String {
    ProcessInfo.processInfo.environment["SVMM_BIN"] ?? repoPath(".build/debug/svmm")
}

struct Finished: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion, collecting its output.
func runProgram(_ path: String, _ arguments: [String], stdin: String? = nil,
                environment: [String: String] = [:], directory: String? = nil) throws -> Finished {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = arguments
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let out = Pipe(), err = Pipe(), input = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = input
    try p.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    // Read stderr on another thread so neither pipe can fill and stall the child.
    let errData = LockedBox(Data())
    let done = DispatchSemaphore(value: 0)
    Thread {
        errData.set(err.fileHandleForReading.readDataToEndOfFile())
        done.signal()
    }.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    done.wait()
    p.waitUntilExit()
    return Finished(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                    stderr: String(decoding: errData.get(), as: UTF8.self))
}

final class LockedBox<T: Sendable>: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): every access holds `lock`.
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
}

/// Status 125 from kvm-sandbox means the sandbox itself failed (L1 did not
/// start, its heartbeat stopped, QEMU died): never a verdict on the command.
/// Such a run, and only such a run, is retried once (`withOneSandboxRetry`).
let sandboxFailed: Int32 = 125

/// Prints `flaky: CASE: CAUSE` for a retried sandbox failure and appends it
/// to $SVMM_FLAKY_LOG, from which Scripts/test counts the run's retries.
func reportFlaky(_ testCase: String, stderr: String) {
    let lines = stderr.split(whereSeparator: \.isNewline)
    let cause = lines.last { $0.contains("the sandbox itself failed") }.map(String.init) ?? "kvm-sandbox status 125"
    let line = "flaky: \(testCase): \(cause)\n"
    print(line, terminator: "")
    if let path = ProcessInfo.processInfo.environment["SVMM_FLAKY_LOG"], let f = FileHandle(forWritingAtPath: path) {
        f.seekToEndOfFile()
        f.write(Data(line.utf8))
        try? f.close()
    }
}

/// Runs `attempt` (one sandbox run: its result, exit status and stderr) and,
/// when the sandbox itself failed (125), once more after a `flaky:` line. A
/// guest crash or hang is the command's own status and is never retried.
func withOneSandboxRetry<T>(_ testCase: String, _ attempt: () throws -> (T, status: Int32, stderr: String)) rethrows -> T {
    var (result, status, stderr) = try attempt()
    if status == sandboxFailed {
        reportFlaky(testCase, stderr: stderr)
        (result, status, stderr) = try attempt()
    }
    #expect(status != sandboxFailed, "the sandbox itself failed twice (infrastructure, not a verdict on the command): \(stderr)")
    return result
}

func sandbox(_ arguments: [String], stdin: String? = nil, environment: [String: String] = [:],
             testCase: String = #function) throws -> Finished {
    try withOneSandboxRetry(testCase) {
        let r = try runProgram(repoPath("Scripts/kvm-sandbox"), arguments, stdin: stdin, environment: environment, directory: repo.path)
        return (r, r.status, r.stderr)
    }
}

/// True when the host's /dev/kvm is the paravirtual kvm_pvm (these CI machines).
var hostIsPVM: Bool { FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") }

/// A running program whose stdout is collected as it arrives, for tests that
/// talk to it: wait for some text, type a line, wait for the answer.
final class Conversation: Sendable {
    let process: Process
    private let stdin: FileHandle
    private let output = LockedBox(Data())
    private let errors = LockedBox(Data())
    private let drained = DispatchGroup()

    init(_ path: String, _ arguments: [String]) throws {
        // A program that died (a failed sandbox) must not take the test
        // process with it when a test types to it: EPIPE, not SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = arguments
        p.currentDirectoryURL = repo
        let out = Pipe(), err = Pipe(), input = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = input
        try p.run()
        process = p
        stdin = input.fileHandleForWriting
        for (pipe, box) in [(out, output), (err, errors)] {
            drained.enter()
            Thread { [drained] in
                while case let chunk = pipe.fileHandleForReading.availableData, !chunk.isEmpty {
                    box.set(box.get() + chunk)
                }
                drained.leave()
            }.start()
        }
    }

    var stdout: String { String(decoding: output.get(), as: UTF8.self) }
    var stderr: String { String(decoding: errors.get(), as: UTF8.self) }

    /// Waits until stdout contains `text` (true) or `seconds` pass or the program ends (false).
    func waitFor(_ text: String, seconds: Double) -> Bool { waitUntil(seconds) { $0.stdout.contains(text) } }

    /// The same for stderr (svmm's own messages).
    func waitForError(_ text: String, seconds: Double) -> Bool { waitUntil(seconds) { $0.stderr.contains(text) } }

    private func waitUntil(_ seconds: Double, _ seen: (Conversation) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if seen(self) { return true }
            if !process.isRunning { return seen(self) }
            usleep(100_000)
        }
        return false
    }

    /// Writes to the program's stdin; a program that has already exited is
    /// left to `finish()` to report.
    func type(_ text: String) { try? stdin.write(contentsOf: Data(text.utf8)) }

    /// Closes stdin and waits for the exit status.
    func finish() -> Int32 {
        try? stdin.close()
        process.waitUntilExit()
        drained.wait()    // both pipes read to their end
        return process.terminationStatus
    }
}

/// Boots the test guest's interactive shell through the sandbox with svmm
/// `bootArguments`, waits for the prompt, types `command`, expects `answer`,
/// exits the shell and expects svmm to end with status 0.
func converseWithGuestShell(_ bootArguments: [String], command: String, answer: String, testCase: String = #function) throws {
    struct Seen { var ready = false, answered = false, exited = false, status: Int32 = 0, stdout = "", stderr = "" }
    let seen = try withOneSandboxRetry(testCase) {
        let c = try Conversation(repoPath("Scripts/kvm-sandbox"), ["--timeout", "600", "--", svmmPath, "boot"] + bootArguments)
        var seen = Seen()
        seen.ready = c.waitFor("SVMM-GUEST-READY", seconds: 300) && c.waitFor(" # ", seconds: 120)
        if seen.ready {
            c.type(command + "\n")
            seen.answered = c.waitFor(answer, seconds: 120)
            c.type("exit\n")
            seen.exited = c.waitFor("SVMM-GUEST-SCRIPT-EXIT=0", seconds: 120)
        }
        seen.status = c.finish()
        (seen.stdout, seen.stderr) = (c.stdout, c.stderr)
        return (seen, seen.status, c.stderr)
    }
    #expect(seen.ready, "no shell prompt; console: \(seen.stdout) stderr: \(seen.stderr)")
    #expect(!seen.ready || seen.answered, "no answer; console: \(seen.stdout)")
    #expect(!seen.ready || seen.exited, "console: \(seen.stdout)")
    #expect(seen.status == 0, "stderr: \(seen.stderr)")
}
