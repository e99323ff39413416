import Glibc

/// Draws exit rates over time, one line per exit reason (summed over vCPUs),
/// as a self-contained SVG document.
public enum StatsPlot {
    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]

    /// The series drawn: reason → [(seconds since start, exits per second)].
    public static func series(_ file: StatsFile) -> [(reason: String, points: [(Double, Double)])] {
        var bySeq: [Int: (t: UInt64, dt: UInt64, exits: [String: UInt64])] = [:]
        for r in file.intervals where Int(r.vcpu) != nil {
            var e = bySeq[r.seq] ?? (r.time, r.duration, [:])
            for (k, v) in r.sections["exits"] ?? [:] { e.exits[k, default: 0] += v }
            bySeq[r.seq] = e
        }
        let ordered = bySeq.sorted { $0.key < $1.key }.map(\.value).filter { $0.dt > 0 }
        var result: [(String, [(Double, Double)])] = []
        for reason in ExitReason.allCases.map(\.name) {
            guard ordered.contains(where: { ($0.exits[reason] ?? 0) > 0 }) else { continue }
            result.append((reason, ordered.map { (Double($0.t) / 1e9, Double($0.exits[reason] ?? 0) / (Double($0.dt) / 1e9)) }))
        }
        return result
    }

    public static func svg(_ file: StatsFile, logScale: Bool = false, title: String = "svmm exits to userspace") -> String {
        let all = series(file)
        let width = 960.0, height = 540.0
        let left = 80.0, right = 180.0, top = 50.0, bottom = 60.0
        let plotW = width - left - right, plotH = height - top - bottom
        let maxT = max(all.flatMap { $0.points.map(\.0) }.max() ?? 1, 1e-3)
        let maxRate = max(all.flatMap { $0.points.map(\.1) }.max() ?? 1, 1)
        let lo = 0.0, hi = logScale ? log10(maxRate) + 0.1 : maxRate * 1.05
        func x(_ t: Double) -> Double { left + plotW * t / maxT }
        func y(_ rate: Double) -> Double {
            let v = logScale ? (rate >= 1 ? log10(rate) : 0) : rate
            return top + plotH * (1 - (v - lo) / (hi - lo))
        }
        func f(_ v: Double) -> String { StatsSummary.format(v, 1) }

        var out = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
            <title>\(xmlEscape(title))</title>
            <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="white"/>
            <text x="\(f(left))" y="28" font-size="16">\(xmlEscape(title)) (\(file.header.vcpus) vCPU\(file.header.vcpus == 1 ? "" : "s"), \(file.header.intervalNanoseconds / 1_000_000) ms intervals)</text>
            <g class="axes" stroke="black" fill="none">
            <line x1="\(f(left))" y1="\(f(top + plotH))" x2="\(f(left + plotW))" y2="\(f(top + plotH))"/>
            <line x1="\(f(left))" y1="\(f(top))" x2="\(f(left))" y2="\(f(top + plotH))"/>
            </g>
            <g class="ticks" fill="black">

            """
        for i in 0...5 {
            let t = maxT * Double(i) / 5
            out += "<line x1=\"\(f(x(t)))\" y1=\"\(f(top + plotH))\" x2=\"\(f(x(t)))\" y2=\"\(f(top + plotH + 5))\" stroke=\"black\"/>"
            out += "<text x=\"\(f(x(t)))\" y=\"\(f(top + plotH + 20))\" text-anchor=\"middle\">\(StatsSummary.format(t, 2))</text>\n"
            let v = lo + (hi - lo) * Double(i) / 5
            let rate = logScale ? pow(10, v) : v
            out += "<line x1=\"\(f(left - 5))\" y1=\"\(f(y(rate)))\" x2=\"\(f(left))\" y2=\"\(f(y(rate)))\" stroke=\"black\"/>"
            out += "<text x=\"\(f(left - 8))\" y=\"\(f(y(rate) + 4))\" text-anchor=\"end\">\(compact(rate))</text>\n"
        }
        out += """
            </g>
            <text x="\(f(left + plotW / 2))" y="\(f(height - 15))" text-anchor="middle">time since start (s)</text>
            <text x="20" y="\(f(top + plotH / 2))" text-anchor="middle" transform="rotate(-90 20 \(f(top + plotH / 2)))">exits per second\(logScale ? " (log)" : "")</text>

            """
        for (i, s) in all.enumerated() {
            let color = colors[i % colors.count]
            let points = s.points.map { "\(f(x($0.0))),\(f(y($0.1)))" }.joined(separator: " ")
            out += "<polyline class=\"series\" data-reason=\"\(s.reason)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(points)\"/>\n"
            let ly = top + 10 + Double(i) * 20
            out += "<line x1=\"\(f(left + plotW + 20))\" y1=\"\(f(ly))\" x2=\"\(f(left + plotW + 45))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"3\"/>"
            out += "<text x=\"\(f(left + plotW + 52))\" y=\"\(f(ly + 4))\">\(s.reason)</text>\n"
        }
        if all.isEmpty {
            out += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(top + plotH / 2))\" text-anchor=\"middle\">no exits recorded</text>\n"
        }
        out += "</svg>\n"
        return out
    }

    static func compact(_ v: Double) -> String {
        if v >= 1e6 { return StatsSummary.format(v / 1e6, 1) + "M" }
        if v >= 1e3 { return StatsSummary.format(v / 1e3, 1) + "k" }
        return StatsSummary.format(v, v < 10 ? 1 : 0)
    }

    static func xmlEscape(_ s: String) -> String {
        s.escaping(["&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"])
    }
}
