"""Training with `caffe train`: run folders, initial weights, log parsing, plots."""
