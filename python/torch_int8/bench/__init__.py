"""Benchmarks for torch_int8: ``python -m torch_int8.bench COMMAND [options]``.

One module per subcommand over a shared timer and report, as CUTLASS's profiler has one profiler
per operation kind:

* :mod:`.gemm`      ``gemm``      torch_int8.gemm / scaled_gemm vs torch._int_mm and bf16 matmul
* :mod:`.linear`    ``linear``    INT8 nn.Linear vs bf16 (forward, training step, decode, quantize bandwidth)
* :mod:`.quantize`  ``quantize``  the fused quantize kernels vs a copy of the same tensor
* :mod:`.backends`  ``backends``  each GEMM kernel family forced vs fp32 SGEMM
* :mod:`.conv`      ``conv``      INT8 nn.Conv2d vs cuDNN bf16 at ResNet-18/50 layer shapes
* :mod:`.models`    ``models``    whole ResNets, training step and inference, bf16 autocast vs converted to INT8

Shared: :mod:`.timer` (methods timed in turns with CUDA events, failures recorded), :mod:`.graphs`
(CUDA-graph replays, layer training steps), :mod:`.report` (meta data, JSON, table numbers, exit
status), :mod:`.plot` (the PNG charts), :mod:`.profiling` (a layer's top kernels), :mod:`.cli`
(the subcommand registry and shared options).
"""
