// The Spinel library module: the uniffi-generated Kotlin (generated into
// build/generated/uniffi by ../build-native.sh, never committed), the
// idiomatic wrapper in src/main/kotlin, and libspinel_ffi.so per ABI in
// src/main/jniLibs (filled by ../build-native.sh with cargo-ndk).
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.spinel"
    compileSdk = 35
    defaultConfig {
        minSdk = 26
        consumerProguardFiles("consumer-rules.pro")
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }
    sourceSets["main"].java.srcDir(layout.buildDirectory.dir("generated/uniffi/kotlin"))
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    // uniffi's Kotlin calls the library through JNA; the @aar variant ships
    // JNA's own native dispatch library for each Android ABI.
    implementation("net.java.dev.jna:jna:5.13.0@aar")
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
}
