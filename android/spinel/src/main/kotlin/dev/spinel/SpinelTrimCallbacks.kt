// Android only (needs android.content): hooks a model to the system's memory
// pressure. Register once, e.g. in Application.onCreate:
//     registerComponentCallbacks(SpinelTrimCallbacks(model, lifecycleScope))
// Not compiled by the JVM tests (no Android SDK there); the level mapping it
// uses, SpinelModel.trimLevelFor, is.
package dev.spinel

import android.content.ComponentCallbacks2
import android.content.res.Configuration
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.launch

class SpinelTrimCallbacks(
    private val model: SpinelModel,
    private val scope: CoroutineScope,
) : ComponentCallbacks2 {
    override fun onTrimMemory(level: Int) {
        val trim = model.trimLevelFor(level) ?: return
        scope.launch { runCatching { model.trimMemory(trim) } }
    }

    @Deprecated("Deprecated in Android")
    override fun onLowMemory() {
        scope.launch { runCatching { model.trimMemory(dev.spinel.ffi.TrimLevel.CRITICAL) } }
    }

    override fun onConfigurationChanged(newConfig: Configuration) {}
}
