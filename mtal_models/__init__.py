"""MTAL's ML core: modalities, multi-task networks, training, metrics, data and selection strategies.

Arrays and tensors in, arrays and tensors out: nothing here knows about Label Studio, Flask or RQ.
"""

import os

# torch 2.14's oneDNN AVX-512 kernel for the weight gradient of 1x1 convolutions crashes the process
# (double free / segfault in jit_avx512_common_1x1_convolution_bwd_weights_t) when it runs on more
# than one thread — measured on these AMD EPYC machines. Capping oneDNN at AVX2 avoids that kernel.
# oneDNN reads the variable at its first primitive, so this must run before the first convolution;
# a value the user set wins. See tests/mtal_models/test_onednn_workaround.py.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
