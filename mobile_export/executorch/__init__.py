"""Everything about the ExecuTorch backend: the target (lowering to XNNPACK and its
workarounds), the runtime child process that verify and bench share, bundled programs,
ETDump rows and the quantized reference. executorch itself is imported lazily inside."""
