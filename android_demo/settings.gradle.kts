pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "MobileNetDemo"

// :core is plain Java (no Android imports): manifest, preprocessing, top-k, .bpte reader.
// It builds and unit-tests on any JVM; :app is the Compose UI around it.
include(":app", ":core")
