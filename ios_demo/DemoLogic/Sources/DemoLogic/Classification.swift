import Foundation

/// Model output -> ranked predictions with labels; the same rules as android_demo's Classification.java.
public enum Classification {
    public struct Prediction: Equatable, Sendable {
        public let index: Int
        public let label: String
        public let probability: Double
    }

    /// Softmax in double with the maximum subtracted.
    public static func softmax(_ logits: [Float]) -> [Double] {
        let m = Double(logits.max() ?? 0)
        let e = logits.map { exp(Double($0) - m) }
        let total = e.reduce(0, +)
        return e.map { $0 / total }
    }

    /// The k most probable classes, highest first; ties keep the lower index first (stable).
    /// `outputKind` "probabilities"/"classifier" means the model applied softmax already.
    public static func topK(_ output: [Float], outputKind: String, k: Int, labels: [String]?) -> [Prediction] {
        let probs = (outputKind == "probabilities" || outputKind == "classifier") ? output.map { Double($0) } : softmax(output)
        let order = probs.indices.sorted { a, b in probs[a] != probs[b] ? probs[a] > probs[b] : a < b }
        return order.prefix(k).map { Prediction(index: $0, label: label(labels, $0), probability: probs[$0]) }
    }

    /// Ranks a probability dictionary (a Core ML classifier's output) the same way.
    public static func topK(probabilities: [String: Double], labels: [String]?, k: Int) -> [Prediction] {
        let index = Dictionary((labels ?? []).enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
        let ranked = probabilities.sorted { a, b in
            if a.value != b.value { return a.value > b.value }
            return (index[a.key] ?? Int.max, a.key) < (index[b.key] ?? Int.max, b.key)
        }
        return ranked.prefix(k).map { Prediction(index: index[$0.key] ?? -1, label: $0.key, probability: $0.value) }
    }

    public static func label(_ labels: [String]?, _ index: Int) -> String {
        if let labels = labels, index >= 0, index < labels.count { return labels[index] }
        return "class \(index)"
    }

    /// labels.txt -> non-blank lines, trimmed, with Python's splitlines/strip rules
    /// (mobile_export.models.read_labels), so the count matches the manifest's.
    public static func parseLabels(_ text: String) -> [String] {
        var labels: [String] = []
        var line = String.UnicodeScalarView()
        let scalars = Array(text.unicodeScalars)
        var i = 0
        func flush() {
            let stripped = strip(String(line))
            if !stripped.isEmpty { labels.append(stripped) }
            line = String.UnicodeScalarView()
        }
        while i < scalars.count {
            let c = scalars[i]
            if isLineBreak(c) {
                flush()
                if c == "\r", i + 1 < scalars.count, scalars[i + 1] == "\n" { i += 1 }
            } else {
                line.append(c)
            }
            i += 1
        }
        flush()
        return labels
    }

    static func isLineBreak(_ c: Unicode.Scalar) -> Bool {
        [0x0A, 0x0D, 0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029].contains(c.value)
    }

    /// Python's str.isspace: Unicode White_Space plus the separators U+001C...U+001F.
    static func isSpace(_ c: Unicode.Scalar) -> Bool {
        c.properties.isWhitespace || (0x1C...0x1F).contains(c.value)
    }

    static func strip(_ s: String) -> String {
        var scalars = Array(s.unicodeScalars)
        while let first = scalars.first, isSpace(first) { scalars.removeFirst() }
        while let last = scalars.last, isSpace(last) { scalars.removeLast() }
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }
}
