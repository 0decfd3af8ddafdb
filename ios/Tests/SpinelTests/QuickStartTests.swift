// ios/README.md's quick start, compiled and run (but the UIKit-only line).
import Foundation
import XCTest

import Spinel

final class QuickStartTests: XCTestCase {
    func testQuickStart() async throws {
        let modelPath = ProcessInfo.processInfo.environment["SPINEL_TEST_MODEL"] ?? ""
        let chatPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("quick-start-\(getpid()).session").path
        defer { try? FileManager.default.removeItem(atPath: chatPath) }

        let model = try await Model.load(path: modelPath, options: LoadOptions(contextLength: 4096))
        let chat = try model.newChat(systemPrompt: "You are a helpful assistant.")
        var answer = ""
        for try await piece in chat.send("What is the capital of France?",
                                         params: GenerationParams(maxTokens: 24)) {
            answer += piece
        }
        try await chat.save(to: chatPath)
        let again = try await model.restoreChat(from: chatPath)

        XCTAssertFalse(answer.isEmpty)
        XCTAssertEqual(again.history, chat.history)
    }
}
