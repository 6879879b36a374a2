"""MobileNet V2 1.0 and V3-Small at 224 side by side in one run: our ExecuTorch .pte (fp32 and
int8, made by mobile_export.pipeline) against PyTorch eager, torch.compile, ONNX Runtime fp32
and int8 (static QDQ, per-channel, the same calibration photos) and LiteRT (litert-torch in a
separate venv, if it installs). Writes docs/benchmarks.md (its peers section), docs/benchmarks.png
and WORKDIR/results.json.

    python3 scripts/bench_peers.py                      # everything, defaults below
    python3 scripts/bench_peers.py --rounds 2 --runs 10 --skip compile   # a quick check

How it measures, and why:
- Every runtime/precision/thread-count runs in its own worker process, loaded and warmed up
  once; the parent then asks the workers in turn for a batch of `--runs` timed calls, for
  `--rounds` rounds, rotating the order each round. Only one worker computes at a time, so
  one runtime's spinning thread pool cannot steal the other's cores, and slow drifts of a
  shared machine hit every runtime alike. A cell is the median of its per-round medians.
- Threads: ExecuTorch `_unsafe_reset_threadpool(n)` before loading; torch `set_num_threads`;
  ONNX Runtime `intra_op_num_threads`; LiteRT `num_threads`.
- All runtimes run the same network: the registry's architecture with seeded random weights
  (latency does not depend on weight values), with mean/std baked in as the .pte has it, on
  the same input (a bundled photo, RGB in [0, 1]). int8 everywhere: static post-training,
  per-channel weights, calibrated on the same bundled photos.
- Ratios (ONNX Runtime time / ExecuTorch time) are the result; absolute times on a shared
  machine are not.
- A goal missed -> per-operator ETDump timings of the .pte (XNNPACK's own profiling events,
  read with the ExecuTorch Inspector) and ONNX Runtime's node profile for the same model.
"""
