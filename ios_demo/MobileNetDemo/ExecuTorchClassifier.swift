import DemoLogic
import ExecuTorch
import Foundation

/// A bundled .pte run by ExecuTorch's runtime, on XNNPACK (CPU) or on the Core ML delegate, as
/// the file was lowered (the manifest's `target` says which; both backends are linked). Takes
/// the float32 NCHW tensor of the manifest's contract, as the Android app does.
final class ExecuTorchClassifier: ModelRunner, @unchecked Sendable {
    let model: BundledModel
    let artifact: DemoManifest.Artifact
    private let module: Module
    /// An ExecuTorch Module is not thread-safe: every call goes through this lock.
    private let lock = NSLock()

    init(model: BundledModel, artifact: DemoManifest.Artifact, bundle: Bundle = .main) throws {
        self.model = model
        self.artifact = artifact
        guard let url = bundle.url(forResource: artifact.file, withExtension: nil) else {
            throw DemoError("\(artifact.file) is listed in the manifest but not in the app; bundle it again and add it to the target.")
        }
        module = Module(filePath: url.path)
        do {
            try module.load("forward")
        } catch {
            throw DemoError("ExecuTorch could not load \(artifact.file) (\(error.localizedDescription)); "
                + "the app's ExecuTorch package must be at least the version that wrote it (see project.yml).")
        }
    }

    var canUseVision: Bool { false }

    func classify(_ data: Data, useVision: Bool) throws -> Outcome {
        let (raw, orientation, _) = try PhotoDecoder.decode(data)
        let t0 = Date()
        let spec = model.manifest.preprocess
        let tensor = Preprocessor.toTensor(raw.oriented(orientation), spec: spec, normalize: artifact.appNormalizes)
        let input = Tensor<Float>(tensor, shape: [1, 3, spec.crop, spec.crop])
        let t1 = Date()
        let output: [Float] = try lock.withLock {
            let outputs = try module.forward(input)
            guard let first: Tensor<Float> = outputs.first?.tensor() else {
                throw DemoError("\(artifact.file) returned no float tensor; export it again.")
            }
            return first.scalars()
        }
        let t2 = Date()
        let shape = artifact.outputShape ?? [1, output.count]
        let (name, backend) = artifact.runtime
        return Outcome(top5: model.rank(output, artifact: artifact), outputShape: shape,
                       preprocessMs: t1.timeIntervalSince(t0) * 1000, inferenceMs: t2.timeIntervalSince(t1) * 1000,
                       path: "exact preprocessing (manifest)", runtime: name, backend: backend)
    }
}
