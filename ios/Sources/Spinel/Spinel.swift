// The idiomatic Swift API over the generated bindings (Generated/SpinelFFI.swift):
// async loading, an AsyncThrowingStream of tokens cancelled by cancelling the
// consuming task, chats saved and restored across app launches, and memory
// pressure (iOS memory warnings) handed to the model. Builds on Linux too
// (swift test in CI); the UIKit hook only where UIKit exists.
import Foundation

#if canImport(UIKit)
import UIKit
#endif

/// One conversation. Turns run one at a time; the history keeps every answer.
public final class SpinelChat: @unchecked Sendable {
    public let session: ChatSession
    private let lock = NSLock()
    private var stats: GenerationStats?

    public init(_ session: ChatSession) { self.session = session }

    /// The stats of the last answer that ended (nil before the first).
    public var lastStats: GenerationStats? {
        lock.lock()
        defer { lock.unlock() }
        return stats
    }

    public var history: [ChatMessage] { session.history() }

    /// Sends `message` and streams the answer's text. Cancelling the
    /// consuming task (or breaking out of the loop) cancels the generation;
    /// the stream fails with `SpinelError` on error.
    ///
    /// `images`: PNG or JPEG files' bytes shown with the message, for a
    /// model loaded with `LoadOptions(mmprojPath:)` (`info().supportsImages`);
    /// a corrupt or oversized image, or images for a text-only model, fail
    /// the stream with `SpinelError.InvalidArgument`.
    public func send(
        _ message: String, images: [Data] = [], params: GenerationParams = GenerationParams()
    )
        -> AsyncThrowingStream<String, Error>
    {
        AsyncThrowingStream { continuation in
            let listener = StreamListener(continuation: continuation) { [weak self] stats in
                guard let self else { return }
                self.lock.lock()
                self.stats = stats
                self.lock.unlock()
            }
            do {
                let handle = try session.send(
                    message: message, params: params, listener: listener, images: images)
                continuation.onTermination = { _ in handle.cancel() }
            } catch {
                continuation.finish(throwing: error)
            }
        }
    }

    /// Sends `message` (and `images`) and returns the whole answer.
    public func reply(
        _ message: String, images: [Data] = [], params: GenerationParams = GenerationParams()
    ) async throws
        -> String
    {
        var text = ""
        for try await piece in send(message, images: images, params: params) {
            text += piece
        }
        return text
    }

    /// Saves the conversation and its KV cache to `path`, atomically (off
    /// the caller's task: it waits for a running answer and writes the file).
    public func save(to path: String) async throws {
        let session = self.session
        try await Task.detached { try session.save(path: path) }.value
    }

    /// Where `Model.trimMemory` saves this chat before freeing its cache.
    public func saveOnTrim(to path: String?) {
        session.setSaveOnTrim(path: path)
    }
}

extension Model {
    /// Loads the GGUF file at `path` off the caller's task (loading blocks);
    /// `progress` gets fractions from 0 to 1.
    public static func load(
        path: String, options: LoadOptions = LoadOptions(),
        progress: (@Sendable (Float, String) -> Void)? = nil
    ) async throws -> Model {
        let listener = progress.map { ProgressListener(report: $0) }
        return try await Task.detached {
            try Model.load(path: path, options: options, progress: listener)
        }.value
    }

    /// A new conversation with its own KV cache.
    public func newChat(systemPrompt: String? = nil) throws -> SpinelChat {
        SpinelChat(try chatSession(systemPrompt: systemPrompt))
    }

    /// A chat saved by `SpinelChat.save(to:)`, with its KV cache: the next
    /// turn processes only the new message. Throws `SpinelError.SessionFile`
    /// for a file of another model or KV type, or a truncated or corrupted one.
    public func restoreChat(from path: String) async throws -> SpinelChat {
        try await Task.detached { SpinelChat(try self.restoreSession(path: path)) }.value
    }

    /// Gives back memory that can be rebuilt (see `TrimLevel`); returns the
    /// bytes freed.
    @discardableResult
    public func trim(_ level: TrimLevel) async throws -> UInt64 {
        try await Task.detached { try self.trimMemory(level: level) }.value
    }
}

#if canImport(UIKit) && !os(watchOS)
/// Hands iOS memory pressure to a model: a memory warning trims at
/// `.critical` (jetsam is near), entering the background at `.background`.
/// Keep it alive as long as the model.
public final class SpinelMemoryPressure {
    private var observers: [NSObjectProtocol] = []

    public init(model: Model) {
        let center = NotificationCenter.default
        let trim = { (level: TrimLevel) in
            Task.detached { _ = try? model.trimMemory(level: level) }
        }
        observers.append(center.addObserver(
            forName: UIApplication.didReceiveMemoryWarningNotification, object: nil, queue: nil
        ) { _ in trim(.critical) })
        observers.append(center.addObserver(
            forName: UIApplication.didEnterBackgroundNotification, object: nil, queue: nil
        ) { _ in trim(.background) })
    }

    deinit {
        observers.forEach(NotificationCenter.default.removeObserver)
    }
}
#endif

/// Bytes of a download on the disk, and the file's size when known.
public struct DownloadProgress: Equatable, Sendable {
    public let downloadedBytes: UInt64
    public let totalBytes: UInt64?
}

/// Downloads a model file: resumable (an interrupted download continues from
/// `destination.part`), SHA-256-checked when `sha256` is given, and only a
/// complete, checked file appears at `destination`. The stream yields
/// progress and finishes when the file is in place; cancelling the consuming
/// task cancels the download (the part is kept). It fails with
/// `SpinelError.Download` (network: download again to resume),
/// `.ChecksumMismatch` or `.Io`.
public func downloadModel(url: String, to destination: String, sha256: String? = nil)
    -> AsyncThrowingStream<DownloadProgress, Error>
{
    AsyncThrowingStream { continuation in
        let listener = DownloadStreamListener(continuation: continuation)
        do {
            let handle = try Spinel.downloadModel(
                url: url, destination: destination, expectedSha256: sha256, listener: listener)
            continuation.onTermination = { _ in handle.cancel() }
        } catch {
            continuation.finish(throwing: error)
        }
    }
}

private final class DownloadStreamListener: DownloadListener, @unchecked Sendable {
    let continuation: AsyncThrowingStream<DownloadProgress, Error>.Continuation
    init(continuation: AsyncThrowingStream<DownloadProgress, Error>.Continuation) {
        self.continuation = continuation
    }
    func onProgress(downloadedBytes: UInt64, totalBytes: UInt64?) {
        continuation.yield(DownloadProgress(downloadedBytes: downloadedBytes, totalBytes: totalBytes))
    }
    func onComplete() { continuation.finish() }
    func onError(error: SpinelError) { continuation.finish(throwing: error) }
}

private final class ProgressListener: LoadProgressListener, @unchecked Sendable {
    let report: @Sendable (Float, String) -> Void
    init(report: @escaping @Sendable (Float, String) -> Void) { self.report = report }
    func onProgress(fraction: Float, stage: String) { report(fraction, stage) }
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
