"""Raw data -> cached tensors: one module per source (T1 MRI first)."""
