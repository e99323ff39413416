import Foundation
import Testing

/// The guest's shell on COM1, driven through svmm's stdin as a person would:
/// wait for the prompt, type a command, read the answer, exit.
@Suite(.serialized) struct ConsoleTests {
    @Test func aCommandTypedIntoTheGuestShellIsAnswered() throws {
        var attempt = 0
        while true {
            attempt += 1
            let c = try Conversation(repoPath("Scripts/kvm-sandbox"), ["--timeout", "600", "--", svmmPath, "boot",
                "--timeout", "400s", "--cmdline", "console=ttyS0 panic=-1 quiet svmm_shell=1"])
            let ready = c.waitFor("SVMM-GUEST-READY", seconds: 300) && c.waitFor(" # ", seconds: 120)
            if ready {
                c.type("echo answer-$((6*7))\n")
                #expect(c.waitFor("answer-42", seconds: 120), "no answer; console: \(c.stdout)")
                c.type("exit\n")
                #expect(c.waitFor("SVMM-GUEST-SCRIPT-EXIT=0", seconds: 120), "console: \(c.stdout)")
            }
            let status = c.finish()
            if status == sandboxFailed && attempt == 1 {
                print("kvm-sandbox: infrastructure failure, retrying once: \(c.stderr)")
                continue
            }
            #expect(ready, "no shell prompt; console: \(c.stdout) stderr: \(c.stderr)")
            #expect(status == 0, "stderr: \(c.stderr)")
            return
        }
    }
}
