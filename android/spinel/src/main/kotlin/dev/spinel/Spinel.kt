// The idiomatic Kotlin API over the generated bindings (package dev.spinel.ffi):
// suspend functions for the blocking calls, a Flow<String> of tokens whose
// cancellation cancels the generation. Pure Kotlin + kotlinx-coroutines, so
// the JVM tests in ffi/tests compile and run it too.
package dev.spinel

import dev.spinel.ffi.ChatMessage
import dev.spinel.ffi.ChatSession
import dev.spinel.ffi.DownloadListener
import dev.spinel.ffi.GenerationListener
import dev.spinel.ffi.GenerationParams
import dev.spinel.ffi.GenerationStats
import dev.spinel.ffi.LoadOptions
import dev.spinel.ffi.LoadProgressListener
import dev.spinel.ffi.MemoryUsage
import dev.spinel.ffi.Model
import dev.spinel.ffi.ModelInfo
import dev.spinel.ffi.SpinelException
import dev.spinel.ffi.TrimLevel
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.channels.trySendBlocking
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.withContext

/** Bytes of a download on the disk, and the file's size when known. */
data class DownloadProgress(val downloadedBytes: ULong, val totalBytes: ULong?)

/**
 * Downloads a model file (resumable: an interrupted download continues from
 * `destination.part`; SHA-256-checked when [sha256] is given; only a complete,
 * checked file appears at [destination]). The flow emits progress and
 * completes when the file is in place; cancelling the collector cancels the
 * download (the part is kept for next time). Fails with
 * [SpinelException.Download] (network: collect again to resume),
 * [SpinelException.ChecksumMismatch] or [SpinelException.Io].
 */
fun downloadModel(url: String, destination: String, sha256: String? = null): Flow<DownloadProgress> =
    callbackFlow {
        val handle = dev.spinel.ffi.downloadModel(url, destination, sha256, object : DownloadListener {
            override fun onProgress(downloadedBytes: ULong, totalBytes: ULong?) {
                trySend(DownloadProgress(downloadedBytes, totalBytes))
            }

            override fun onComplete() {
                channel.close()
            }

            override fun onError(error: SpinelException) {
                channel.close(error)
            }
        })
        awaitClose { handle.cancel() }
    }

/** A loaded model. Thread-safe; [close] it to free the memory map. */
class SpinelModel private constructor(val ffi: Model) : AutoCloseable {
    companion object {
        /**
         * Loads the GGUF file at [path] on [Dispatchers.IO].
         * Throws [SpinelException] (e.g. [SpinelException.Io] for a missing file).
         */
        suspend fun load(
            path: String,
            options: LoadOptions = LoadOptions(),
            onProgress: ((fraction: Float, stage: String) -> Unit)? = null,
        ): SpinelModel = withContext(Dispatchers.IO) {
            val listener = onProgress?.let { report ->
                object : LoadProgressListener {
                    override fun onProgress(fraction: Float, stage: String) = report(fraction, stage)
                }
            }
            SpinelModel(Model.load(path, options, listener))
        }
    }

    val info: ModelInfo get() = ffi.info()

    /** A new conversation with its own KV cache. */
    fun newChat(systemPrompt: String? = null): SpinelChat = SpinelChat(ffi.chatSession(systemPrompt))

    /**
     * A chat saved by [SpinelChat.save] (the app was killed, say), with its KV
     * cache: the next turn processes only the new message. Throws
     * [SpinelException.SessionFile] for a file of another model or KV type, or
     * a truncated or corrupted one.
     */
    suspend fun restoreChat(path: String): SpinelChat =
        withContext(Dispatchers.IO) { SpinelChat(ffi.restoreSession(path)) }

    /**
     * Gives back memory that can be rebuilt: idle chats' KV caches (saved first
     * where [SpinelChat.saveOnTrim] asks), and with [TrimLevel.CRITICAL] the
     * pages of streamed weights. Returns the bytes given back.
     */
    suspend fun trimMemory(level: TrimLevel): ULong =
        withContext(Dispatchers.IO) { ffi.trimMemory(level) }

    /** What the model and its chats hold now. */
    val memoryUsage: MemoryUsage get() = ffi.memoryUsage()

    /**
     * The level Android's `ComponentCallbacks2.onTrimMemory(level)` asks for, or
     * null where nothing need be given back: `TRIM_MEMORY_UI_HIDDEN` (20) and
     * `TRIM_MEMORY_BACKGROUND` (40) are [TrimLevel.BACKGROUND],
     * `TRIM_MEMORY_RUNNING_CRITICAL` (15) and `TRIM_MEMORY_COMPLETE` (80)
     * [TrimLevel.CRITICAL]. (The constants are Android's, written out so this
     * file builds on the JVM too; `SpinelTrimCallbacks` in the app module
     * registers it.)
     */
    fun trimLevelFor(androidLevel: Int): TrimLevel? = when {
        androidLevel >= 80 || androidLevel == 15 -> TrimLevel.CRITICAL
        androidLevel >= 20 -> TrimLevel.BACKGROUND
        else -> null
    }

    suspend fun tokenize(text: String, addSpecial: Boolean = false): List<UInt> =
        withContext(Dispatchers.Default) { ffi.tokenize(text, addSpecial) }

    suspend fun detokenize(tokens: List<UInt>): String =
        withContext(Dispatchers.Default) { ffi.detokenize(tokens) }

    override fun close() = ffi.close()
}

/** One conversation. Turns run one at a time; the history keeps every answer. */
class SpinelChat(val ffi: ChatSession) : AutoCloseable {
    /** The stats of the last answer that ended (null before the first). */
    @Volatile
    var lastStats: GenerationStats? = null
        private set

    val history: List<ChatMessage> get() = ffi.history()

    fun setSystemPrompt(prompt: String) = ffi.setSystemPrompt(prompt)

    /** Saves the conversation and its KV cache to [path], atomically. */
    suspend fun save(path: String) = withContext(Dispatchers.IO) { ffi.save(path) }

    /** Where [SpinelModel.trimMemory] saves this chat before freeing its cache. */
    var saveOnTrim: String? = null
        set(value) {
            field = value
            ffi.setSaveOnTrim(value)
        }

    /**
     * Sends [message] and streams the answer's text. Generation starts when
     * the flow is collected; cancelling the collector (or the scope) cancels
     * the generation. The flow fails with [SpinelException] on error; after it
     * completes, [lastStats] holds the answer's stats.
     *
     * [images]: PNG or JPEG files' bytes shown with the message, for a model
     * loaded with `LoadOptions.mmprojPath` ([ModelInfo.supportsImages]); a
     * corrupt or oversized image, or images for a text-only model, fail the
     * flow with [SpinelException.InvalidArgument].
     */
    fun send(
        message: String,
        params: GenerationParams = GenerationParams(),
        images: List<ByteArray> = emptyList(),
    ): Flow<String> = callbackFlow {
        val handle = ffi.send(message, params, object : GenerationListener {
            override fun onToken(text: String) {
                // Blocks Spinel's generation thread while the buffer is full
                // (backpressure); fails at once after cancellation.
                trySendBlocking(text)
            }

            override fun onComplete(stats: GenerationStats) {
                lastStats = stats
                channel.close()
            }

            override fun onError(error: SpinelException) {
                channel.close(error)
            }
        }, images)
        awaitClose { handle.cancel() }
    }

    override fun close() = ffi.close()
}
