import Stats
import VMCore
import ArgumentParser
import Glibc
import Machine

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Summarize (and plot) a file recorded with --stats.",
        discussion: """
            Reads JSONL or CSV (svmm-stats schema, docs/telemetry.md) and prints the
            same table as --stats-summary. With --plot, also writes an SVG of exit
            rates over time, one line per exit reason (summed over vCPUs).

            Examples:
              svmm stats run.jsonl
              svmm stats run.csv --plot exits.svg --log-scale
            """
    )

    @Argument(help: "A file written by --stats.")
    var file: String

    @Option(help: ArgumentHelp("Write an SVG of exit rates over time to OUT.", valueName: "OUT.svg"))
    var plot: String?

    @Flag(help: "Logarithmic rate axis in the plot.")
    var logScale = false

    func run() throws {
        guard let bytes = FirmwareLocation.readFile(file) else {
            fail("cannot read \(file): \(String(cString: strerror(errno)))", .noInput)
        }
        let parsed: StatsFile
        do { parsed = try StatsFile.parse(String(decoding: bytes, as: UTF8.self)) } catch {
            fail("\(file): \(error.description)", .badInput)
        }
        writeStdout(Array(StatsSummary.render(header: parsed.header, finals: parsed.finals).utf8))
        if let plot {
            let svg = StatsPlot.svg(parsed, logScale: logScale)
            let fd = open(plot, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            if fd < 0 { fail("cannot create \(plot): \(String(cString: strerror(errno)))", .cannotCreate) }
            defer { close(fd) }
            var s = svg
            let ok = s.withUTF8 { HostIO.writeAll(fd, UnsafeRawBufferPointer($0)) }
            if !ok { fail("writing \(plot) failed: \(String(cString: strerror(errno)))", .cannotCreate) }
        }
    }
}
