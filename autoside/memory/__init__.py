"""Peak training memory: measured (``meter``: CUDA allocator peak, on CPU a live-tensor tracker) and predicted
before training from dry steps (``predict``)."""
