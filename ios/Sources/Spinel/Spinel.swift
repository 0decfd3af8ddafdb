// The idiomatic Swift API over the generated bindings (Generated/SpinelFFI.swift):
// an AsyncThrowingStream of tokens, cancelled by cancelling the consuming task.
// Kept small and mechanical: no Swift toolchain exists where this was written.
import Foundation

public final class SpinelChat: @unchecked Sendable {
    public let session: ChatSession
    /// The stats of the last answer that ended.
    public private(set) var lastStats: GenerationStats?

    public init(_ session: ChatSession) { self.session = session }

    /// Sends `message` and streams the answer. Ending the consuming task
    /// (or breaking out of the loop) cancels the generation.
    public func send(_ message: String, params: GenerationParams = defaultParams())
        -> AsyncThrowingStream<String, Error>
    {
        AsyncThrowingStream { continuation in
            let listener = StreamListener(continuation: continuation) { [weak self] stats in
                self?.lastStats = stats
            }
            do {
                let handle = try session.send(message: message, params: params, listener: listener)
                continuation.onTermination = { _ in handle.cancel() }
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }
}

/// llama.cpp's sampling defaults, no token limit, no stop strings.
public func defaultParams() -> GenerationParams {
    GenerationParams(temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05,
                     repeatPenalty: 1.0, seed: 24301, maxTokens: nil, stop: [])
}

extension Model {
    /// Loads off the caller's task (loading blocks).
    public static func load(path: String, options: LoadOptions) async throws -> Model {
        try await Task.detached { try Model.load(path: path, options: options, progress: nil) }.value
    }
}

private final class StreamListener: GenerationListener, @unchecked Sendable {
    let continuation: AsyncThrowingStream<String, Error>.Continuation
    let onStats: (GenerationStats) -> Void

    init(continuation: AsyncThrowingStream<String, Error>.Continuation,
         onStats: @escaping (GenerationStats) -> Void) {
        self.continuation = continuation
        self.onStats = onStats
    }

    func onToken(text: String) { continuation.yield(text) }
    func onComplete(stats: GenerationStats) { onStats(stats); continuation.finish() }
    func onError(error: SpinelError) { continuation.finish(throwing: error) }
}
