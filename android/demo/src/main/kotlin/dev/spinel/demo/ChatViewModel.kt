package dev.spinel.demo

import android.app.Application
import android.net.Uri
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateListOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.setValue
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import dev.spinel.SpinelChat
import dev.spinel.SpinelModel
import dev.spinel.ffi.GenerationParams
import dev.spinel.ffi.SpinelException
import java.io.File
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

data class Turn(val role: String, val text: String)

class ChatViewModel(app: Application) : AndroidViewModel(app) {
    var status by mutableStateOf("Pick a .gguf model")
        private set
    var generating by mutableStateOf(false)
        private set
    var tokensPerSecond by mutableStateOf<Double?>(null)
        private set
    val turns = mutableStateListOf<Turn>()

    private var model: SpinelModel? = null
    private var chat: SpinelChat? = null
    private var job: Job? = null

    /** Copies the picked document into app storage (the model is memory-mapped) and loads it. */
    fun load(uri: Uri) = viewModelScope.launch {
        status = "Copying model…"
        try {
            val file = withContext(Dispatchers.IO) {
                val dest = File(getApplication<Application>().filesDir, "model.gguf")
                getApplication<Application>().contentResolver.openInputStream(uri)!!.use { input ->
                    dest.outputStream().use { input.copyTo(it) }
                }
                dest
            }
            model?.close()
            val m = SpinelModel.load(file.path) { fraction, stage ->
                status = "Loading: $stage (${(fraction * 100).toInt()}%)"
            }
            model = m
            chat = m.newChat("You are a helpful assistant.")
            turns.clear()
            val info = m.info
            status = "${info.name ?: info.architecture} · ${info.quantization} · ${info.contextLength} ctx"
        } catch (e: SpinelException) {
            status = "Could not load: ${e.message}"
        }
    }

    fun send(message: String) {
        val chat = chat ?: return
        turns += Turn("user", message)
        turns += Turn("assistant", "")
        generating = true
        job = viewModelScope.launch {
            try {
                // A vision model (LoadOptions(mmprojPath = …)) also takes
                // images: send(message, params, images = listOf(pngBytes)).
                chat.send(message, GenerationParams(temperature = 0.7f)).collect { piece ->
                    turns[turns.lastIndex] = turns.last().copy(text = turns.last().text + piece)
                }
                tokensPerSecond = chat.lastStats?.tokensPerSecond
            } catch (e: SpinelException) {
                status = "Error: ${e.message}"
            } finally {
                generating = false
            }
        }
    }

    /** The stop button: cancelling the collecting coroutine cancels the generation. */
    fun stop() {
        job?.cancel()
    }

    override fun onCleared() {
        job?.cancel()
        chat?.close()
        model?.close()
    }
}
