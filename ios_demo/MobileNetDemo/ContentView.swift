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
    @Published var classifier: CoreMLClassifier?
    @Published var error: String?
    @Published var busy: String? = "Loading the bundled model…"
    @Published var outcome: Outcome?
    @Published var preview: UIImage?
    @Published var useVision = false

    func load() async {
        do {
            classifier = try await Task.detached(priority: .userInitiated) { try CoreMLClassifier() }.value
        } catch {
            self.error = error.localizedDescription
        }
        busy = nil
    }

    func classify(_ item: PhotosPickerItem) async {
        guard let classifier else { return }
        busy = "Classifying…"
        error = nil
        defer { busy = nil }
        do {
            guard let data = try await item.loadTransferable(type: Data.self) else {
                throw DemoError("Could not read that photo; pick another one.")
            }
            let vision = useVision
            outcome = try await Task.detached(priority: .userInitiated) { try classifier.classify(data, useVision: vision) }.value
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
                if let c = state.classifier {
                    Section("Model") {
                        Text("\(c.manifest.modelName) · \(c.artifact.file) (\(c.artifact.precision))").bold()
                        Text("input \(c.manifest.preprocess.crop)x\(c.manifest.preprocess.crop), resize \(c.manifest.preprocess.resize) \(c.manifest.preprocess.interpolation), compute units: CPU + Neural Engine")
                            .font(.footnote)
                        if c.canUseVision {
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
                        .disabled(state.classifier == nil || state.busy != nil)
                }
                if let image = state.preview {
                    Section {
                        Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 280)
                    }
                }
                if let outcome = state.outcome {
                    Section("Result (\(outcome.path))") {
                        Text(String(format: "latency: inference %.1f ms, preprocessing %.1f ms", outcome.inferenceMs, outcome.preprocessMs)).bold()
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
            .navigationTitle("MobileNet on Core ML")
        }
        .task { await state.load() }
        .onChange(of: item) { _, newItem in
            guard let newItem else { return }
            Task { await state.classify(newItem) }
        }
    }
}
