"""The RMNet re-identification library, by workflow (README.md, "Layout", lists the modules):

- ``rmnet.data``    dataset layouts, image loading, the synthetic dataset
- ``rmnet.caffe``   Caffe's files (nets, solvers, caffemodels) and pycaffe
- ``rmnet.eval``    descriptors, features files, metrics, re-ranking
- ``rmnet.deploy``  ONNX/OpenVINO export, the embedding API, profiling
- ``rmnet.gallery`` the persistent gallery of descriptors (FAISS)
- ``rmnet.bench``   the benchmarks' shared harness and baselines

The packages above it, each importing only the ones below: ``layers`` (the Caffe Python layers),
``generator`` (templates -> prototxts), ``training`` (training runs) and ``commands`` (the
command lines). ``rmnet.layers`` only forwards the module names earlier versions wrote into
prototxts to ``layers``.
"""
