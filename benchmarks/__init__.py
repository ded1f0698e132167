"""Benchmarks of the stage driver and the mock platform: ``python -m benchmarks [--quick]``.

Every figure is printed next to a baseline measured in the same run, against the same server,
with measured and baseline repetitions interleaved: the machines are shared and noisy, so
the suite reports medians, p99s and ratios, never a single absolute time.

One module per figure:

1. :mod:`benchmarks.lifecycle` - a no-op driver's life-cycle vs one unary round trip.
2. :mod:`benchmarks.inputs_ready` - upstream success to ``execute`` vs a raw stream push.
3. :mod:`benchmarks.scale` - 1,000 waiting stages: threads, memory, completions per second.
4. :mod:`benchmarks.startup` - ``import clara`` and an idle driver's memory vs bare grpc.
5. :mod:`benchmarks.payload` - Payloads Upload/Download throughput vs a direct file copy.
6. :mod:`benchmarks.dag` - a 200-stage DAG: platform overhead per stage vs a process start.
"""
