"""Caffe's files and pycaffe: the one place that imports caffe."""
