"""ProxyFormer's benchmarks: latency per backend, J&F per precision, training step time.

The command lines are the scripts beside this file (``python benchmarks/latency.py``,
``accuracy.py``, ``demo.py``, ``train_step.py``); the work is done by the modules, one job each:

- ``machine``: CPU model, cores, the ISA flags that set GEMM peaks, the GPU, load, versions.
- ``gemm``: this machine's measured GEMM peaks per arithmetic.
- ``workload``: the inputs of one call, the PyTorch baseline and the GFLOPs of a call.
- ``runners``: the rows (PyTorch eager, onnxruntime per precision, TensorRT).
- ``timing``: warm-up, repeated calls, p50/p90/p99 and spread, device synchronisation.
- ``node_profile``: per-operator time of a row (onnxruntime's profiler, OpenVINO's counters).
- ``targets``: the issue's latency targets and the paper's figure.
- ``suite``: one latency run over every row (``run_benchmark``).
- ``report`` and ``plot``: the results as JSON, markdown and PNG.
"""
