"""ROME (Meng et al. 2022), in files named after the paper's steps:

- ``context``      seeded context templates sampled from the model, and the rows a fact is read from
- ``layer_stats``  second-moment statistics C = E[k kᵀ], every layer in one pass, cached as safetensors
- ``compute_k``    k*: the key at the subject's last token, averaged over contexts (an edit reads it
                   from ``compute_vs``'s first pass, which traces the same rows at that module)
- ``compute_v``    v*: the optimised value vector, with the full per-step trajectory; many facts
                   and many settings in one batch (``v_batch`` holds the batch's rows and settings)
- ``chunks``       forward passes in chunks of whole facts, halved on a CUDA out-of-memory
- ``rank_one``     the rank-one update, restored bit-exactly on exit

The knobs are ``tuner.hparams``; the model plumbing ``tuner.plumbing``; MEMIT ``tuner.memit``."""
