"""The kernels the model runs: linear layers of every precision behind one contract
(``linear.LinearLayer``), the int8 GEMM chosen per CPU, rotated int8 inputs, llmq's native
C++ kernels (``csrc/``) and the timing that tells which precision is fastest here."""
