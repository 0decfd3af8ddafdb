// The Swift wrapper and the generated bindings against the real demo model
// (SPINEL_TEST_MODEL) and a tiny vision model (SPINEL_TEST_VISION_MODEL, its
// SPINEL_TEST_VISION_MMPROJ, a PNG at SPINEL_TEST_IMAGE), run by
// ios/test-linux.sh with `swift test`.
import Foundation
import XCTest

@testable import Spinel

final class Steps: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [(Float, String)] = []
    func add(_ f: Float, _ s: String) { lock.lock(); items.append((f, s)); lock.unlock() }
    var all: [(Float, String)] { lock.lock(); defer { lock.unlock() }; return items }
}

final class SpinelTests: XCTestCase {
    static let path = ProcessInfo.processInfo.environment["SPINEL_TEST_MODEL"] ?? ""
    static let options = LoadOptions(threads: 2, contextLength: 1024)
    static let greedy = GenerationParams(temperature: 0, maxTokens: 16)
    static var shared: Model?

    func model() async throws -> Model {
        if let m = SpinelTests.shared { return m }
        let m = try await Model.load(path: SpinelTests.path, options: SpinelTests.options)
        SpinelTests.shared = m
        return m
    }

    func testLoadWithProgressAndInfo() async throws {
        let steps = Steps()
        let m = try await Model.load(path: SpinelTests.path, options: SpinelTests.options) {
            steps.add($0, $1)
        }
        let fractions = steps.all.map { $0.0 }
        XCTAssertEqual(fractions.first, 0)
        XCTAssertEqual(fractions.last, 1)
        XCTAssertEqual(fractions, fractions.sorted())
        let info = m.info()
        XCTAssertEqual(info.architecture, "llama")
        XCTAssertEqual(info.quantization, "Q4_1")
        XCTAssertEqual(info.contextLength, 1024)
        XCTAssertEqual(info.vocabularySize, 49152)
        XCTAssertTrue(info.chatTemplate?.contains("<|im_start|>") ?? false)
    }

    func testAnswerStreams() async throws {
        let chat = try await model().newChat(systemPrompt: "You are a helpful assistant.")
        var pieces: [String] = []
        for try await piece in chat.send("What is the capital of France?", params: SpinelTests.greedy) {
            pieces.append(piece)
        }
        XCTAssertGreaterThan(pieces.count, 1)
        XCTAssertFalse(pieces.joined().trimmingCharacters(in: .whitespaces).isEmpty)
        let stats = try XCTUnwrap(chat.lastStats)
        XCTAssertTrue((1...16).contains(stats.generatedTokens))
        XCTAssertEqual(chat.history.map { $0.role }, ["system", "user", "assistant"])
        XCTAssertEqual(chat.history.last?.content, pieces.joined())
    }

    func testCancellingTheTaskStopsTheAnswer() async throws {
        let chat = try await model().newChat()
        let long = GenerationParams(temperature: 0, maxTokens: 400)
        let task = Task { () -> Int in
            var n = 0
            for try await _ in chat.send("Write a long story about a dragon.", params: long) {
                n += 1
                if n == 3 { withUnsafeCurrentTask { $0?.cancel() } }
            }
            return n
        }
        let n = try await task.value
        XCTAssertLessThan(n, 400)
        // The next turn waits for the cancelled one to end, so it proves it did.
        _ = try await chat.reply("Thanks!", params: GenerationParams(temperature: 0, maxTokens: 4))
        XCTAssertEqual(chat.history.count, 4)
        XCTAssertLessThan(chat.history[1].content.count, 2000)
    }

    func testStopString() async throws {
        let chat = try await model().newChat()
        let params = GenerationParams(temperature: 0, maxTokens: 64, stop: ["5"])
        let text = try await chat.reply("Count from 1 to 10, separated by commas.", params: params)
        XCTAssertFalse(text.contains("5"), text)
        XCTAssertEqual(chat.lastStats?.stopReason, .stopString(stop: "5"))
    }

    func testJsonSchemaAnswerParses() async throws {
        let schema = """
            {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
             "population": {"type": "integer", "minimum": 0}}, "required": ["city", "population"]}
            """
        let chat = try await model().newChat()
        let params = GenerationParams(temperature: 0, maxTokens: 100, jsonSchema: schema)
        let text = try await chat.reply("Tell me about Rome as JSON.", params: params)
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        let doc = try XCTUnwrap(object, text)
        XCTAssertEqual(Set(doc.keys), ["city", "population"])
        let city = try XCTUnwrap(doc["city"] as? String, text)
        XCTAssertLessThanOrEqual(city.count, 20)
        let population = try XCTUnwrap(doc["population"] as? Int, text)
        XCTAssertGreaterThanOrEqual(population, 0)
        XCTAssertEqual(chat.lastStats?.stopReason, .endOfGeneration)
    }

    func testToolCallsComeBackParsed() async throws {
        let tools = #"[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#
        // SmolLM2 does not call tools by itself: a grammar makes the answer a
        // Llama 3.1 JSON tool call.
        let call = #"root ::= "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"" [A-Za-z ]{1,20} "\"}}""#
        let chat = try await model().newChat()
        let params = GenerationParams(temperature: 0, maxTokens: 40, tools: tools, grammar: call)
        _ = try await chat.reply("What is the weather in Paris?", params: params)
        let calls = try XCTUnwrap(chat.lastStats?.toolCalls)
        XCTAssertEqual(calls.count, 1)
        XCTAssertEqual(calls.first?.name, "get_weather")
        XCTAssertTrue(calls.first?.argumentsJson.contains("city") ?? false)
    }

    func testPromptLookupKeepsTheAnswer() async throws {
        let q = "Repeat exactly: one two three four, one two three four."
        let m = try await model()
        let plain = try await m.newChat().reply(q, params: GenerationParams(temperature: 0, maxTokens: 32))
        let chat = try m.newChat()
        let fast = try await chat.reply(q, params: GenerationParams(temperature: 0, maxTokens: 32, lookupNgram: 2))
        XCTAssertEqual(plain, fast)
        XCTAssertGreaterThan(chat.lastStats?.draftedTokens ?? 0, 0)
    }

    func testTwoSessionsOnTwoTasksAnswerAsAlone() async throws {
        let m = try await model()
        let questions = ["What is 2+2?", "Name a color."]
        var alone: [String] = []
        for q in questions {
            alone.append(try await m.newChat().reply(q, params: SpinelTests.greedy))
        }
        let together = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for (i, q) in questions.enumerated() {
                group.addTask { (i, try await m.newChat().reply(q, params: SpinelTests.greedy)) }
            }
            var out = ["", ""]
            for try await (i, text) in group { out[i] = text }
            return out
        }
        XCTAssertEqual(together, alone)
    }

    func testImagesWithAMessage() async throws {
        let env = ProcessInfo.processInfo.environment
        let png = try Data(contentsOf: URL(fileURLWithPath: env["SPINEL_TEST_IMAGE"] ?? ""))
        let mmproj = env["SPINEL_TEST_VISION_MMPROJ"] ?? ""
        let vision = try await Model.load(
            path: env["SPINEL_TEST_VISION_MODEL"] ?? "",
            options: LoadOptions(threads: 2, contextLength: 512, mmprojPath: mmproj))
        XCTAssertTrue(vision.info().supportsImages)
        let text = try await model()
        XCTAssertFalse(text.info().supportsImages)
        let params = GenerationParams(temperature: 0, maxTokens: 8)

        let chat = try vision.newChat()
        let answer = try await chat.reply("What is in this image?", images: [png], params: params)
        XCTAssertFalse(answer.isEmpty)
        XCTAssertGreaterThan(try XCTUnwrap(chat.lastStats).imageEncodeSeconds, 0)
        XCTAssertTrue(try chat.session.renderPrompt().contains("<|image|>What is in this image?"))
        // Greedy: a new chat given the same bytes answers the same.
        let again = try await vision.newChat().reply("What is in this image?", images: [png], params: params)
        XCTAssertEqual(again, answer)

        // A truncated PNG, and images for the text-only demo model.
        for (m, bytes, says) in [
            (vision, png.prefix(png.count / 2), "corrupt or truncated"),
            (text, png, "images need a vision model"),
        ] {
            let bad = try m.newChat()
            do {
                _ = try await bad.reply("What is in this image?", images: [Data(bytes)], params: params)
                XCTFail("\(says): no error")
            } catch let SpinelError.InvalidArgument(reason) {
                XCTAssertTrue(reason.contains(says), reason)
            }
            XCTAssertTrue(bad.history.isEmpty)
        }
        // The mmproj on the text-only model does not load.
        do {
            _ = try await Model.load(path: SpinelTests.path, options: LoadOptions(mmprojPath: mmproj))
            XCTFail("an mmproj on a text-only model loaded")
        } catch SpinelError.InvalidModel {
        }
    }

    func testBadPathIsATypedError() async throws {
        do {
            _ = try await Model.load(path: "/nonexistent/model.gguf")
            XCTFail("loaded a missing file")
        } catch let SpinelError.Io(reason) {
            XCTAssertTrue(reason.contains("nonexistent"), reason)
        }
    }

    func testSaveAndRestore() async throws {
        let m = try await model()
        let dir = FileManager.default.temporaryDirectory
        let path = dir.appendingPathComponent("spinel-swift-\(getpid()).session").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let chat = try m.newChat(systemPrompt: "Answer briefly.")
        _ = try await chat.reply("Name a colour.", params: SpinelTests.greedy)
        try await chat.save(to: path)
        let restored = try await m.restoreChat(from: path)
        XCTAssertEqual(restored.history, chat.history)
        let want = try await chat.reply("And a fruit?", params: SpinelTests.greedy)
        let got = try await restored.reply("And a fruit?", params: SpinelTests.greedy)
        XCTAssertEqual(got, want)
        XCTAssertGreaterThan(restored.lastStats?.cachedTokens ?? 0, 0)

        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        do {
            _ = try await m.restoreChat(from: path)
            XCTFail("restored a truncated file")
        } catch let SpinelError.SessionFile(reason) {
            XCTAssertTrue(reason.contains("truncated"), reason)
        }
    }

    func testTrimMemory() async throws {
        let m = try await model()
        let chat = try m.newChat(systemPrompt: "Answer briefly.")
        _ = try await chat.reply("Name a colour.", params: SpinelTests.greedy)
        let before = m.memoryUsage()
        XCTAssertGreaterThan(before.kvCacheBytes, 0)
        XCTAssertGreaterThan(before.weightsResidentBytes, 0)
        let freed = try await m.trim(.background)
        XCTAssertGreaterThan(freed, 0)
        XCTAssertLessThan(m.memoryUsage().kvCacheBytes, before.kvCacheBytes)
        let fresh = try m.newChat()
        for message in chat.history { fresh.session.addMessage(message: message) }
        let want = try await fresh.reply("And a fruit?", params: SpinelTests.greedy)
        let got = try await chat.reply("And a fruit?", params: SpinelTests.greedy)
        XCTAssertEqual(got, want)
        XCTAssertEqual(chat.lastStats?.cachedTokens, 0)
    }
}

/// `downloadModel` against a local server ios/test-linux.sh starts
/// (SPINEL_TEST_DOWNLOAD_URL serves a file whose SHA-256 is
/// SPINEL_TEST_DOWNLOAD_SHA256).
final class DownloadTests: XCTestCase {
    func testDownloadWithProgressAndChecksum() async throws {
        let env = ProcessInfo.processInfo.environment
        let url = try XCTUnwrap(env["SPINEL_TEST_DOWNLOAD_URL"])
        let sha = try XCTUnwrap(env["SPINEL_TEST_DOWNLOAD_SHA256"])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dl-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }

        let dest = dir.appendingPathComponent("model.gguf").path
        var last: DownloadProgress?
        for try await p in downloadModel(url: url, to: dest, sha256: sha) { last = p }
        let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: dest)[.size] as? UInt64)
        XCTAssertGreaterThan(size, 0)
        XCTAssertEqual(last, DownloadProgress(downloadedBytes: size, totalBytes: size))

        let bad = dir.appendingPathComponent("bad.gguf").path
        do {
            for try await _ in downloadModel(url: url, to: bad, sha256: String(repeating: "0", count: 64)) {}
            XCTFail("a wrong checksum was accepted")
        } catch SpinelError.ChecksumMismatch {
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: bad))
    }
}
