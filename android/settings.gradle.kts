// The Spinel Android SDK (`:spinel`) and its chat demo (`:demo`).
// Build the native libraries first: ./build-native.sh
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "spinel-android"
include(":spinel", ":demo")
