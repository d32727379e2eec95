"""The RMNet re-identification library, by workflow (README.md, "Layout", lists the modules):

- ``rmnet.data``    dataset layouts, image loading, the synthetic dataset
- ``rmnet.caffe``   Caffe's files (nets, solvers, caffemodels) and pycaffe
- ``rmnet.train``   training runs, initial weights, logs and plots
- ``rmnet.eval``    descriptors, features files, metrics, re-ranking
- ``rmnet.deploy``  ONNX/OpenVINO export, the embedding API, profiling
- ``rmnet.bench``   the benchmarks' shared harness and baselines
- ``rmnet.generator`` the net generator: Jinja2 templates and variants -> prototxts, solvers
- ``rmnet.layers``  the Caffe Python layers (prototxts name them ``rmnet.layers.<module>``)
- ``rmnet.cli``     the command lines (``tools/*.py`` and console entry points)
"""
