import DemoLogic
import PhotosUI
import SwiftUI

@main
struct MobileNetDemoApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}

@MainActor
final class DemoState: ObservableObject {
    /// One runner per bundled file the app can run: Core ML (.mlpackage), ExecuTorch (.pte on
    /// XNNPACK or the Core ML delegate), so one phone can compare them on the same photo.
    @Published var runners: [any ModelRunner] = []
    @Published var selected = 0
    @Published var error: String?
    @Published var busy: String? = "Loading the bundled models…"
    @Published var outcome: Outcome?
    @Published var preview: UIImage?
    @Published var useVision = false

    var runner: (any ModelRunner)? { runners.indices.contains(selected) ? runners[selected] : nil }

    func load() async {
        do {
            runners = try await Task.detached(priority: .userInitiated) { () throws -> [any ModelRunner] in
                let model = try BundledModel()
                return try model.artifacts().map { artifact -> any ModelRunner in
                    artifact.format == "pte"
                        ? try ExecuTorchClassifier(model: model, artifact: artifact)
                        : try CoreMLClassifier(model: model, artifact: artifact)
                }
            }.value
        } catch {
            self.error = error.localizedDescription
        }
        busy = nil
    }

    func classify(_ item: PhotosPickerItem) async {
        guard let runner else { return }
        busy = "Classifying…"
        error = nil
        defer { busy = nil }
        do {
            guard let data = try await item.loadTransferable(type: Data.self) else {
                throw DemoError("Could not read that photo; pick another one.")
            }
            let vision = useVision && runner.canUseVision
            outcome = try await Task.detached(priority: .userInitiated) { try runner.classify(data, useVision: vision) }.value
            preview = UIImage(data: data)
        } catch {
            self.error = error.localizedDescription
        }
    }
}

struct ContentView: View {
    @StateObject private var state = DemoState()
    @State private var item: PhotosPickerItem?

    var body: some View {
        NavigationStack {
            List {
                if let r = state.runner {
                    Section("Model") {
                        Text("\(r.model.manifest.modelName) · \(r.artifact.file) (\(r.artifact.precision))").bold()
                        if state.runners.count > 1 {
                            Picker("Run with", selection: $state.selected) {
                                ForEach(Array(state.runners.enumerated()), id: \.offset) { i, runner in
                                    Text("\(runner.runtime.name) · \(runner.runtime.backend)").tag(i)
                                }
                            }
                        }
                        let p = r.model.manifest.preprocess
                        Text("input \(p.crop)x\(p.crop), resize \(p.resize) \(p.interpolation); runtime \(r.runtime.name), backend \(r.runtime.backend)")
                            .font(.footnote)
                        if r.canUseVision {
                            Toggle("Use Vision (center crop)", isOn: $state.useVision)
                        }
                    }
                }
                if let busy = state.busy {
                    Section { ProgressView(busy) }
                }
                if let error = state.error {
                    Section { Text(error).foregroundStyle(.red).bold() }
                }
                Section {
                    PhotosPicker("Pick photo", selection: $item, matching: .images)
                        .disabled(state.runner == nil || state.busy != nil)
                }
                if let image = state.preview {
                    Section {
                        Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 280)
                    }
                }
                if let outcome = state.outcome {
                    Section("Result: \(outcome.runtime) · \(outcome.backend)") {
                        Text(String(format: "latency: inference %.1f ms, preprocessing %.1f ms", outcome.inferenceMs, outcome.preprocessMs)).bold()
                        Text(outcome.path).font(.footnote)
                        if let top5 = outcome.top5 {
                            ForEach(Array(top5.enumerated()), id: \.offset) { rank, p in
                                HStack {
                                    Text("\(rank + 1). \(p.label)")
                                    Spacer()
                                    Text(String(format: "%.1f%%", 100 * p.probability)).monospacedDigit()
                                }
                            }
                        } else {
                            Text("feature model: output shape \(outcome.outputShape.map(String.init).joined(separator: "x"))")
                        }
                    }
                }
            }
            .navigationTitle("MobileNet on iOS")
        }
        .task { await state.load() }
        .onChange(of: item) { _, newItem in
            guard let newItem else { return }
            // Reset the selection, so picking the same photo again (e.g. after switching the
            // runtime) fires onChange once more.
            item = nil
            Task { await state.classify(newItem) }
        }
    }
}
