// The Kotlin bindings of spinel-ffi and the Android wrapper (android/spinel,
// pure Kotlin) on the JVM, against the real model. Compiled and run by
// ffi/tests/run-bindings-tests.sh; the model path is SPINEL_TEST_MODEL, the
// vision model's, its mmproj's and a PNG's SPINEL_TEST_VISION_MODEL,
// SPINEL_TEST_VISION_MMPROJ and SPINEL_TEST_IMAGE.
// Prints "N passed, 0 failed" and exits 0 only if every check passed.

import dev.spinel.SpinelModel
import dev.spinel.ffi.GenerationListener
import dev.spinel.ffi.GenerationParams
import dev.spinel.ffi.GenerationStats
import dev.spinel.ffi.LoadOptions
import dev.spinel.ffi.Model
import dev.spinel.ffi.SpinelException
import dev.spinel.ffi.StopReason
import dev.spinel.ffi.TrimLevel
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking

val modelPath: String = System.getenv("SPINEL_TEST_MODEL") ?: error("SPINEL_TEST_MODEL is not set")
val options = LoadOptions(threads = 2u, contextLength = 1024u)
fun env(name: String): String = System.getenv(name) ?: error("$name is not set")

class Collector(val onFirst: (() -> Unit)? = null) : GenerationListener {
    val tokens = java.util.Collections.synchronizedList(mutableListOf<String>())
    @Volatile var stats: GenerationStats? = null
    @Volatile var error: SpinelException? = null
    val done = CountDownLatch(1)

    override fun onToken(text: String) {
        tokens.add(text)
        if (tokens.size == 1) onFirst?.invoke()
    }
    override fun onComplete(stats: GenerationStats) { this.stats = stats; done.countDown() }
    override fun onError(error: SpinelException) { this.error = error; done.countDown() }

    fun await(): GenerationStats {
        check(done.await(120, TimeUnit.SECONDS)) { "no answer within 120 s" }
        error?.let { throw it }
        return stats!!
    }
    val text get() = synchronized(tokens) { tokens.joinToString("") }
}

fun check(cond: Boolean, msg: () -> String) { if (!cond) throw AssertionError(msg()) }

fun main() {
    val model = Model.load(modelPath, options, null)
    val tests = linkedMapOf<String, () -> Unit>()

    tests["info"] = {
        val info = model.info()
        check(info.architecture == "llama") { "architecture ${info.architecture}" }
        check(info.parameters in 130_000_000uL..140_000_000uL) { "parameters ${info.parameters}" }
        check(info.quantization == "Q4_1") { "quantization ${info.quantization}" }
        check(info.contextLength == 1024u) { "context ${info.contextLength}" }
        check(info.chatTemplate?.contains("<|im_start|>") == true) { "template" }
    }
    tests["tokenize round trip"] = {
        val ids = model.tokenize("Hello, world!", false)
        check(ids.size > 1) { "ids $ids" }
        check(model.detokenize(ids) == "Hello, world!") { "detokenize" }
    }
    tests["chat streams tokens and stats"] = {
        val chat = model.chatSession("You are a helpful assistant.")
        val c = Collector()
        val handle = chat.send("What is the capital of France?",
            GenerationParams(temperature = 0f, maxTokens = 24u), c)
        val stats = c.await()
        handle.waitForCompletion()
        check(c.text.isNotBlank()) { "answer: ${c.text}" }
        check(c.tokens.size > 1) { "tokens ${c.tokens}" }
        check(stats.generatedTokens in 1u..24u) { "generated ${stats.generatedTokens}" }
        check(stats.tokensPerSecond > 0.0) { "tok/s ${stats.tokensPerSecond}" }
        val ttft = stats.timeToFirstTokenSeconds
        check(ttft != null && ttft < stats.totalSeconds) { "ttft $ttft" }
        check(chat.history().map { it.role } == listOf("system", "user", "assistant")) { "history" }
    }
    tests["stop string"] = {
        val chat = model.chatSession(null)
        val c = Collector()
        chat.send("Count from 1 to 10, separated by commas.",
            GenerationParams(temperature = 0f, maxTokens = 48u, stop = listOf("5")), c)
        val stats = c.await()
        check(stats.stopReason == StopReason.StopString("5")) { "stop ${stats.stopReason}" }
        check("5" !in c.text) { "text ${c.text}" }
    }
    tests["cancel from another thread"] = {
        val chat = model.chatSession(null)
        val ready = CountDownLatch(1)
        var handle: dev.spinel.ffi.GenerationHandle? = null
        val c = Collector(onFirst = { Thread { ready.await(); handle!!.cancel() }.start() })
        handle = chat.send("Write a long story about a dragon.",
            GenerationParams(temperature = 0f, maxTokens = 400u), c)
        ready.countDown()
        val stats = c.await()
        check(stats.stopReason == StopReason.Cancelled) { "stop ${stats.stopReason}" }
        check(stats.generatedTokens < 400u) { "generated ${stats.generatedTokens}" }
    }
    tests["two sessions on two threads"] = {
        val answers = java.util.concurrent.ConcurrentHashMap<String, GenerationStats>()
        val threads = listOf("What is 2+2?", "Name a color.").map { q ->
            Thread {
                val c = Collector()
                model.chatSession(null).send(q, GenerationParams(temperature = 0f, maxTokens = 16u), c)
                answers[q] = c.await()
            }.apply { start() }
        }
        threads.forEach { it.join() }
        check(answers.size == 2 && answers.values.all { it.generatedTokens > 0u }) { "answers $answers" }
    }
    tests["missing file is SpinelException.Io"] = {
        try {
            Model.load("/nonexistent/model.gguf", LoadOptions(), null)
            throw AssertionError("loaded a missing file")
        } catch (e: SpinelException.Io) {
            check("nonexistent" in e.message.orEmpty()) { "message ${e.message}" }
        }
    }
    tests["wrapper: Flow of tokens, cancel by cancelling the flow"] = {
        runBlocking {
            val m = SpinelModel.load(modelPath, options)
            val chat = m.newChat("You are a helpful assistant.")
            val all = chat.send("What is the capital of France?",
                GenerationParams(temperature = 0f, maxTokens = 24u)).toList()
            check(all.joinToString("").isNotBlank()) { "answer $all" }
            check(chat.lastStats?.generatedTokens ?: 0u > 0u) { "stats ${chat.lastStats}" }
            // take(3) cancels the flow after three pieces: the generation stops.
            val three = chat.send("Write a long story about a dragon.",
                GenerationParams(temperature = 0f, maxTokens = 400u)).take(3).toList()
            check(three.size == 3) { "pieces $three" }
            // The next turn waits for the cancelled one to end, so it proves it did.
            chat.send("Thanks!", GenerationParams(temperature = 0f, maxTokens = 4u)).toList()
            val last = chat.history
            check(last.size == 7) { "history ${last.map { it.role }}" }
            check(last[4].content.length < 400) { "cancelled answer ${last[4].content}" }
            try {
                SpinelModel.load("/nonexistent/model.gguf")
                throw AssertionError("loaded a missing file")
            } catch (e: SpinelException.Io) {
            }
            m.close()
        }
    }

    tests["wrapper: save and restore, trim memory"] = {
        runBlocking {
            val m = SpinelModel.load(modelPath, options)
            val chat = m.newChat("Answer briefly.")
            val greedy = GenerationParams(temperature = 0f, maxTokens = 16u)
            chat.send("Name a colour.", greedy).toList()
            val file = java.io.File.createTempFile("spinel-chat", ".session")
            chat.save(file.path)
            val restored = m.restoreChat(file.path)
            check(restored.history == chat.history) { "restored history ${restored.history}" }
            val want = chat.send("And a fruit?", greedy).toList().joinToString("")
            val got = restored.send("And a fruit?", greedy).toList().joinToString("")
            check(got == want) { "restored answer '$got' vs '$want'" }
            check((restored.lastStats?.cachedTokens ?: 0u) > 0u) { "stats ${restored.lastStats}" }
            file.writeBytes(file.readBytes().copyOf(100))
            try {
                m.restoreChat(file.path)
                throw AssertionError("restored a truncated file")
            } catch (e: SpinelException.SessionFile) {
            }

            val before = m.memoryUsage
            check(before.kvCacheBytes > 0uL && before.weightsResidentBytes > 0uL) { "usage $before" }
            chat.saveOnTrim = file.path
            check(m.trimLevelFor(40) == TrimLevel.BACKGROUND && m.trimLevelFor(80) == TrimLevel.CRITICAL) { "levels" }
            check(m.trimLevelFor(5) == null) { "running moderate" }
            check(m.trimMemory(TrimLevel.BACKGROUND) > 0uL) { "nothing freed" }
            check(m.memoryUsage.kvCacheBytes < before.kvCacheBytes) { "usage ${m.memoryUsage}" }
            val again = chat.send("And a vegetable?", greedy).toList().joinToString("")
            check(again.isNotBlank() && chat.lastStats?.cachedTokens == 0u) { "after trim: '$again' ${chat.lastStats}" }
            check(m.restoreChat(file.path).history.size == 5) { "saved on trim" }
            file.delete()
            m.close()
        }
    }

    tests["wrapper: downloadModel as a Flow of progress"] = {
        val payload = java.util.Random(7).let { r -> ByteArray(1 shl 20).also { r.nextBytes(it) } }
        val digest = java.security.MessageDigest.getInstance("SHA-256").digest(payload)
            .joinToString("") { "%02x".format(it) }
        val server = com.sun.net.httpserver.HttpServer.create(java.net.InetSocketAddress("127.0.0.1", 0), 0)
        server.createContext("/") { ex ->
            ex.sendResponseHeaders(200, payload.size.toLong())
            ex.responseBody.use { it.write(payload) }
        }
        server.start()
        val url = "http://127.0.0.1:${server.address.port}/model.gguf"
        val dir = java.nio.file.Files.createTempDirectory("spinel-dl").toFile()
        try {
            runBlocking {
                val dest = java.io.File(dir, "model.gguf")
                val steps = dev.spinel.downloadModel(url, dest.path, digest).toList()
                check(steps.last() == dev.spinel.DownloadProgress(payload.size.toULong(), payload.size.toULong())) { "progress $steps" }
                check(dest.readBytes().contentEquals(payload)) { "content" }
                val bad = java.io.File(dir, "bad.gguf")
                try {
                    dev.spinel.downloadModel(url, bad.path, "00".repeat(32)).toList()
                    throw AssertionError("a wrong checksum was accepted")
                } catch (e: SpinelException.ChecksumMismatch) {
                }
                check(!bad.exists()) { "a file with a wrong checksum appeared" }
            }
        } finally {
            server.stop(0)
            dir.deleteRecursively()
        }
    }

    tests["wrapper: json_schema answers and prompt lookup"] = {
        runBlocking {
            val m = SpinelModel.load(modelPath, options)
            val schema = """{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                "population": {"type": "integer", "minimum": 0}}, "required": ["city", "population"]}"""
            val json = m.newChat(null).send("Tell me about Rome as JSON.",
                GenerationParams(temperature = 0f, maxTokens = 100u, jsonSchema = schema)).toList().joinToString("")
            val shape = Regex("""\{\s*"city"\s*:\s*"[^"]{0,20}"\s*,\s*"population"\s*:\s*(0|[1-9][0-9]*)\s*\}""")
            check(shape.matches(json)) { "json_schema answer '$json'" }
            val q = "Repeat exactly: one two three four, one two three four."
            val plain = m.newChat(null).send(q, GenerationParams(temperature = 0f, maxTokens = 32u)).toList()
            val chat = m.newChat(null)
            val fast = chat.send(q, GenerationParams(temperature = 0f, maxTokens = 32u, lookupNgram = 2u)).toList()
            check(plain.joinToString("") == fast.joinToString("")) { "lookup changed the answer" }
            check((chat.lastStats?.draftedTokens ?: 0u) > 0u) { "no drafts ${chat.lastStats}" }
            // Tool calls: SmolLM2 does not call tools by itself, so a grammar
            // makes the answer a Llama 3.1 JSON tool call; it comes back parsed.
            val tools = """[{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"""
            val call = """root ::= "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"" [A-Za-z ]{1,20} "\"}}""""
            val toolChat = m.newChat(null)
            toolChat.send("What is the weather in Paris?",
                GenerationParams(temperature = 0f, maxTokens = 40u, tools = tools, grammar = call)).toList()
            val calls = toolChat.lastStats?.toolCalls.orEmpty()
            check(calls.size == 1 && calls[0].name == "get_weather" && "city" in calls[0].argumentsJson) { "tool calls $calls" }
            m.close()
        }
    }

    tests["images with a message"] = {
        val png = java.io.File(env("SPINEL_TEST_IMAGE")).readBytes()
        val mmproj = env("SPINEL_TEST_VISION_MMPROJ")
        val vision = Model.load(env("SPINEL_TEST_VISION_MODEL"),
            LoadOptions(threads = 2u, contextLength = 512u, mmprojPath = mmproj), null)
        check(vision.info().supportsImages && !model.info().supportsImages) { "supportsImages" }
        val params = GenerationParams(temperature = 0f, maxTokens = 8u)
        val chat = vision.chatSession(null)
        val c = Collector()
        chat.send("What is in this image?", params, c, listOf(png))
        val stats = c.await()
        check(c.text.isNotEmpty()) { "empty answer" }
        check(stats.imageEncodeSeconds > 0.0) { "image encode ${stats.imageEncodeSeconds}" }
        check("<|image|>What is in this image?" in chat.renderPrompt()) { chat.renderPrompt() }
        // The wrapper: the same bytes in a new chat, the same greedy answer.
        runBlocking {
            val wrapped = dev.spinel.SpinelChat(vision.chatSession(null))
            val again = wrapped.send("What is in this image?", params, listOf(png)).toList().joinToString("")
            check(again == c.text) { "wrapper: '$again' vs '${c.text}'" }
            check((wrapped.lastStats?.imageEncodeSeconds ?: 0.0) > 0.0) { "wrapper stats" }
        }
        // A truncated PNG, and images for the text-only demo model.
        val cases = listOf(
            Triple(vision, png.copyOf(png.size / 2), "corrupt or truncated"),
            Triple(model, png, "images need a vision model"),
        )
        for ((m, bytes, says) in cases) {
            val bad = m.chatSession(null)
            val e = Collector()
            bad.send("What is in this image?", params, e, listOf(bytes))
            val err = runCatching { e.await() }.exceptionOrNull()
            check(err is SpinelException.InvalidArgument && says in err.reason) { "$says: $err" }
            check(bad.history().isEmpty()) { "history ${bad.history()}" }
        }
        val mismatch = runCatching { Model.load(modelPath, LoadOptions(mmprojPath = mmproj), null) }
        check(mismatch.exceptionOrNull() is SpinelException.InvalidModel) { "mmproj on a text model: $mismatch" }
        vision.close()
    }

    tests["README quick start"] = {
        runBlocking {
            val chatPath = java.io.File.createTempFile("quick-start", ".session").path
            // As in README.md:
            val model = SpinelModel.load(modelPath, LoadOptions(contextLength = 4096u))
            val chat = model.newChat("You are a helpful assistant.")
            val answer = chat.send("What is the capital of France?", GenerationParams(maxTokens = 24u))
                .toList().joinToString("")
            chat.save(chatPath)
            val again = model.restoreChat(chatPath)
            model.trimMemory(TrimLevel.BACKGROUND)
            check(answer.isNotBlank() && again.history == chat.history) { "quick start: '$answer'" }
            java.io.File(chatPath).delete()
            model.close()
        }
    }

    var failed = 0
    for ((name, test) in tests) {
        try {
            test()
            println("ok   $name")
        } catch (e: Throwable) {
            failed++
            println("FAIL $name: $e")
        }
    }
    println("${tests.size - failed} passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
