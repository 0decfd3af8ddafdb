// SwiftUI chat demo skeleton: pick a .gguf file, stream the answer, stop, tokens/s.
// Add it to an Xcode iOS app target that depends on the Spinel package (../..).
import Spinel
import SwiftUI
import UniformTypeIdentifiers

@main
struct SpinelChatApp: App {
    var body: some Scene { WindowGroup { ChatView() } }
}

@MainActor
final class ChatModel: ObservableObject {
    @Published var status = "Pick a .gguf model"
    @Published var turns: [(role: String, text: String)] = []
    @Published var generating = false
    @Published var tokensPerSecond: Double?
    private var chat: SpinelChat?
    private var task: Task<Void, Never>?

    func load(_ url: URL) {
        Task {
            do {
                _ = url.startAccessingSecurityScopedResource()
                let model = try await Model.load(path: url.path, options: LoadOptions(
                    threads: nil, contextLength: nil, memoryBudget: nil, kvCacheType: nil))
                chat = SpinelChat(try model.chatSession(systemPrompt: "You are a helpful assistant."))
                let info = model.info()
                status = "\(info.name ?? info.architecture) · \(info.quantization)"
            } catch {
                status = "Could not load: \(error)"
            }
        }
    }

    func send(_ message: String) {
        guard let chat else { return }
        turns.append(("user", message))
        turns.append(("assistant", ""))
        generating = true
        task = Task {
            do {
                // A vision model (LoadOptions(mmprojPath:)) also takes
                // images: chat.send(message, images: [pngData]).
                for try await piece in chat.send(message) {
                    turns[turns.count - 1].text += piece
                }
                tokensPerSecond = chat.lastStats?.tokensPerSecond
            } catch {
                status = "Error: \(error)"
            }
            generating = false
        }
    }

    /// The stop button: cancelling the task ends the stream, which cancels the generation.
    func stop() { task?.cancel() }
}

struct ChatView: View {
    @StateObject private var model = ChatModel()
    @State private var input = ""
    @State private var picking = false

    var body: some View {
        VStack(alignment: .leading) {
            HStack {
                Button("Pick model") { picking = true }
                Text(model.status).font(.caption)
            }
            if let tps = model.tokensPerSecond { Text(String(format: "%.1f tokens/s", tps)) }
            List(model.turns.indices, id: \.self) { i in
                Text("\(model.turns[i].role): \(model.turns[i].text)")
            }
            HStack {
                TextField("Message", text: $input)
                if model.generating {
                    Button("Stop") { model.stop() }
                } else {
                    Button("Send") { model.send(input); input = "" }
                }
            }
        }
        .padding()
        .fileImporter(isPresented: $picking, allowedContentTypes: [.data]) { result in
            if case .success(let url) = result { model.load(url) }
        }
    }
}
