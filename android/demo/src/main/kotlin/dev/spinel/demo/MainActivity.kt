package dev.spinel.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import androidx.lifecycle.viewmodel.compose.viewModel

class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent { MaterialTheme { Surface(Modifier.fillMaxSize()) { ChatScreen() } } }
    }
}

@Composable
fun ChatScreen(vm: ChatViewModel = viewModel()) {
    val pick = rememberLauncherForActivityResult(ActivityResultContracts.OpenDocument()) { uri ->
        uri?.let { vm.load(it) }
    }
    var input by remember { mutableStateOf("") }
    Column(Modifier.fillMaxSize().padding(12.dp)) {
        Row {
            Button(onClick = { pick.launch(arrayOf("*/*")) }) { Text("Pick model") }
            Text(vm.status, Modifier.padding(start = 8.dp))
        }
        vm.tokensPerSecond?.let { Text("%.1f tokens/s".format(it)) }
        LazyColumn(Modifier.weight(1f).fillMaxWidth()) {
            items(vm.turns) { turn -> Text("${turn.role}: ${turn.text}", Modifier.padding(4.dp)) }
        }
        Row {
            OutlinedTextField(input, { input = it }, Modifier.weight(1f))
            if (vm.generating) {
                Button(onClick = vm::stop) { Text("Stop") }
            } else {
                Button(onClick = { vm.send(input); input = "" }) { Text("Send") }
            }
        }
    }
}
