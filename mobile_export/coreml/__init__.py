"""Everything about the Core ML backend: the target (conversion), compression, reading the
saved package, and `mil`, the executor that runs an ML Program on Linux. coremltools is
imported lazily inside."""
