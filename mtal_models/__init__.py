"""MTAL's ML core: modalities, multi-task networks, training, metrics, data and selection strategies.

Arrays and tensors in, arrays and tensors out: nothing here knows about Label Studio, Flask or RQ.
"""
