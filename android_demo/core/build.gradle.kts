// Platform-free logic of the demo: no Android imports, Java 8 language level (what the
// Python test suite compiles with javac --release 8), unit-tested on the plain JVM.
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_1_8
    targetCompatibility = JavaVersion.VERSION_1_8
}

dependencies {
    testImplementation(libs.junit)
}

tasks.test {
    // Golden vectors: -Pgolden=DIR (e.g. from `python -m mobile_export.golden DIR`), else the
    // small copy committed beside the iOS XCTest in this repository.
    val golden = (project.findProperty("golden") as String?)
        ?: rootProject.file("../ios_demo/DemoLogic/Tests/DemoLogicTests/Golden").absolutePath
    systemProperty("golden.dir", golden)
    (project.findProperty("bpte") as String?)?.let { systemProperty("bpte.dir", it) }
    testLogging { events("failed"); showStandardStreams = false }
}
