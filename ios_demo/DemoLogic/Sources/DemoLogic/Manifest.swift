import Foundation

/// A manifest the app cannot use; `description` is one line for the screen: the problem and the fix.
public struct ManifestError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// manifest.json "preprocess": resize the shorter side, center-crop, [0, 1], then (x - mean) / std
/// unless the model normalizes inside. Mirrors mobile_export/preprocess.py.
public struct PreprocessSpec: Equatable, Sendable {
    public let resize: Int
    public let crop: Int
    public let interpolation: String  // bilinear | bicubic | nearest
    public let mean: [Double]
    public let std: [Double]

    public init(resize: Int, crop: Int, interpolation: String, mean: [Double], std: [Double]) {
        self.resize = resize
        self.crop = crop
        self.interpolation = interpolation
        self.mean = mean
        self.std = std
    }
}

/// manifest.json (mobile_export/manifest.schema.json, version 1) as the app needs it; the same
/// checks and messages as android_demo's Manifest.java.
public struct DemoManifest: Sendable {
    public static let format = "mobile-export.manifest"
    public static let version = 1

    public struct Labels: Sendable {
        public let file: String
        public let count: Int
        public let sha256: String
    }

    public struct Artifact: Sendable {
        public let file: String
        public let target: String
        public let format: String
        public let precision: String
        public let sha256: String
        public let inputName: String
        public let inputKind: String  // tensor | image
        public let inputShape: [Int]
        public let inputDtype: String
        public let valueRange: [Double]
        public let normalizedInModel: Bool
        public let outputName: String
        public let outputKind: String  // logits | probabilities | classifier | features
        public let outputShape: [Int]?

        /// True when the app must subtract mean and divide by std itself.
        public var appNormalizes: Bool { !normalizedInModel }

        /// The resource name Xcode gives a bundled .mlpackage once compiled (X.mlmodelc).
        public var compiledName: String { (file as NSString).deletingPathExtension }

        /// Which runtime and backend run this file, for the screen: the manifest's `target`
        /// (coreml, executorch = XNNPACK, executorch-coreml = ExecuTorch's Core ML delegate).
        public var runtime: (name: String, backend: String) {
            switch (format, target) {
            case ("mlpackage", _): return ("Core ML", "CPU + Neural Engine")
            case ("pte", "executorch-coreml"): return ("ExecuTorch", "Core ML delegate (CPU + Neural Engine)")
            case ("pte", _): return ("ExecuTorch", "XNNPACK (CPU)")
            default: return (target, format)
            }
        }
    }

    public let modelName: String
    public let family: String
    public let output: String
    public let resolution: Int
    public let numClasses: Int
    public let preprocess: PreprocessSpec
    public let labels: Labels?
    public let artifacts: [Artifact]

    public init(json: Data) throws {
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: json, options: [])
        } catch {
            throw ManifestError("manifest.json is not valid JSON; bundle the model again")
        }
        guard let doc = any as? [String: Any] else {
            throw ManifestError("manifest.json is not a JSON object; bundle the model again")
        }
        guard (doc["format"] as? String) == DemoManifest.format else {
            throw ManifestError("manifest.json is not a mobile-export manifest (format \(doc["format"].map { "\($0)" } ?? "nil")); bundle the model again with `mobile-export bundle`")
        }
        guard let version = doc["version"] as? NSNumber, version.doubleValue == Double(DemoManifest.version) else {
            let shown = (doc["version"] as? NSNumber).map { $0.doubleValue == $0.doubleValue.rounded() ? String(Int($0.doubleValue)) : "\($0)" } ?? "\(doc["version"] ?? "nil")"
            throw ManifestError("manifest version \(shown) is not supported (this app reads version \(DemoManifest.version)); update the app or export with a matching mobile-export")
        }
        let model = try Self.object(doc, "model", "manifest")
        modelName = try Self.string(model, "name", "model")
        family = try Self.string(model, "family", "model")
        output = try Self.string(model, "output", "model")
        resolution = try Self.positive(model, "resolution", "model")
        numClasses = try Self.positive(model, "num_classes", "model")

        let pre = try Self.object(doc, "preprocess", "manifest")
        let interpolation = try Self.string(pre, "interpolation", "preprocess")
        guard Resampler.knows(interpolation) else {
            throw ManifestError("preprocess interpolation '\(interpolation)' is unknown to this app (it knows bilinear, bicubic, nearest); update the app")
        }
        let std = try Self.doubles(pre["std"], "preprocess std", 3)
        for s in std where !(s > 0) {
            throw ManifestError("preprocess std must be positive, got \(s); re-export the model")
        }
        let resize = try Self.positive(pre, "resize", "preprocess")
        let crop = try Self.positive(pre, "crop", "preprocess")
        guard crop <= resize else {
            throw ManifestError("preprocess crop \(crop) is larger than resize \(resize); re-export the model")
        }
        let mean = try Self.doubles(pre["mean"], "preprocess mean", 3)
        preprocess = PreprocessSpec(resize: resize, crop: crop, interpolation: interpolation, mean: mean, std: std)

        if doc["labels"] == nil || doc["labels"] is NSNull {
            labels = nil
        } else if let l = doc["labels"] as? [String: Any] {
            let file = try Self.string(l, "file", "labels")
            guard Self.isPlainName(file) else {
                throw ManifestError("labels file '\(file)' is not a plain file name; re-export the model")
            }
            labels = try Labels(file: file, count: Self.positive(l, "count", "labels"), sha256: Self.string(l, "sha256", "labels"))
        } else {
            throw ManifestError("manifest labels must be an object or null; re-export the model")
        }

        guard let list = doc["artifacts"] as? [Any] else {
            throw ManifestError("manifest artifacts must be a list; re-export the model")
        }
        var artifacts: [Artifact] = []
        for (i, item) in list.enumerated() {
            let where_ = "artifact \(i)"
            guard let a = item as? [String: Any] else {
                throw ManifestError("\(where_) is not an object; re-export the model")
            }
            let file = try Self.string(a, "file", where_)
            guard Self.isPlainName(file) else {
                throw ManifestError("\(where_): artifact name '\(file)' is not a plain file name; re-export the model")
            }
            let input = try Self.object(a, "input", where_)
            let out = try Self.object(a, "output", where_)
            var outShape: [Int]? = nil
            if let shape = out["shape"], !(shape is NSNull) {
                outShape = try Self.ints(shape, "\(where_) output shape")
            }
            artifacts.append(try Artifact(
                file: file,
                target: Self.string(a, "target", where_),
                format: Self.string(a, "format", where_),
                precision: Self.string(a, "precision", where_),
                sha256: Self.string(a, "sha256", where_),
                inputName: Self.string(input, "name", "\(where_) input"),
                inputKind: Self.string(input, "kind", "\(where_) input"),
                inputShape: Self.ints(input["shape"], "\(where_) input shape"),
                inputDtype: Self.string(input, "dtype", "\(where_) input"),
                valueRange: Self.doubles(input["value_range"], "\(where_) input value_range", 2),
                normalizedInModel: Self.bool(input, "normalized_in_model", "\(where_) input"),
                outputName: Self.string(out, "name", "\(where_) output"),
                outputKind: Self.string(out, "kind", "\(where_) output"),
                outputShape: outShape))
        }
        self.artifacts = artifacts
    }

    /// The first artifact of `format` (pte, bpte, mlpackage), or nil.
    public func artifact(format: String) -> Artifact? {
        artifacts.first { $0.format == format }
    }

    /// Every artifact of `formats` the app can run, in manifest order, each checked as `runnable`;
    /// a message saying how to bundle one when there is none.
    public func runnableArtifacts(formats: [String]) throws -> [Artifact] {
        let found = artifacts.filter { formats.contains($0.format) }
        guard !found.isEmpty else {
            let names = formats.map { "." + $0 }.joined(separator: " or ")
            throw ManifestError("no \(names) model is bundled for \(modelName); run `mobile-export bundle` with one")
        }
        return try found.map { try checked($0) }
    }

    /// The artifact this app runs, or a message saying how to bundle one.
    public func runnable(format: String) throws -> Artifact {
        guard let a = artifact(format: format) else {
            throw ManifestError("no .\(format) model is bundled for \(modelName); run `mobile-export bundle` with one")
        }
        return try checked(a)
    }

    func checked(_ a: Artifact) throws -> Artifact {
        if a.inputKind == "tensor" {
            let s = a.inputShape
            guard s.count == 4, s[0] == 1, s[1] == 3, s[2] == preprocess.crop, s[3] == preprocess.crop else {
                throw ManifestError("\(a.file) expects input shape \(s) but the preprocess crop is \(preprocess.crop); re-export the model")
            }
        }
        return a
    }

    // MARK: typed field access: each failure names the field

    static func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.contains("\\")
    }

    static func object(_ m: [String: Any], _ key: String, _ where_: String) throws -> [String: Any] {
        guard let v = m[key] as? [String: Any] else { throw ManifestError("\(where_) has no '\(key)' object; re-export the model") }
        return v
    }

    static func string(_ m: [String: Any], _ key: String, _ where_: String) throws -> String {
        guard let v = m[key] as? String else { throw ManifestError("\(where_) has no '\(key)' text; re-export the model") }
        return v
    }

    static func bool(_ m: [String: Any], _ key: String, _ where_: String) throws -> Bool {
        guard let v = m[key] as? Bool else { throw ManifestError("\(where_) has no '\(key)' true/false; re-export the model") }
        return v
    }

    static func positive(_ m: [String: Any], _ key: String, _ where_: String) throws -> Int {
        guard let n = m[key] as? NSNumber else {
            throw ManifestError("\(where_) has no '\(key)' number; re-export the model")
        }
        let d = n.doubleValue
        guard d == d.rounded(), d >= 1, d <= Double(Int32.max) else {
            throw ManifestError("\(where_) '\(key)' must be a positive integer, got \(d); re-export the model")
        }
        return Int(d)
    }

    static func ints(_ v: Any?, _ where_: String) throws -> [Int] {
        guard let l = v as? [Any] else { throw ManifestError("\(where_) must be a list of integers; re-export the model") }
        return try l.map { x in
            guard let n = x as? NSNumber, n.doubleValue == n.doubleValue.rounded() else {
                throw ManifestError("\(where_) must be a list of integers; re-export the model")
            }
            return n.intValue
        }
    }

    static func doubles(_ v: Any?, _ where_: String, _ count: Int) throws -> [Double] {
        guard let l = v as? [Any], l.count == count else {
            throw ManifestError("\(where_) must be a list of \(count) numbers; re-export the model")
        }
        return try l.map { x in
            guard let n = x as? NSNumber else { throw ManifestError("\(where_) must be a list of \(count) numbers; re-export the model") }
            return n.doubleValue
        }
    }
}
