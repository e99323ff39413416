import Foundation
import Testing

/// The guest's shell on COM1, driven through svmm's stdin as a person would:
/// wait for the prompt, type a command, read the answer, exit.
@Suite(.serialized) struct ConsoleTests {
    @Test func aCommandTypedIntoTheGuestShellIsAnswered() throws {
        try converseWithGuestShell(["--timeout", "400s", "--cmdline", "console=ttyS0 panic=-1 quiet svmm_shell=1"],
                                   command: "echo answer-$((6*7))", answer: "answer-42")
    }
}
