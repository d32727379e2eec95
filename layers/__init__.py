"""Caffe Python layers of the RMNet reproduction, and the numpy maths behind them.

Caffe loads the layer classes by module name from the train/test prototxts
(``python_param { module: "layers.losses" layer: "AMSoftmaxLossLayer" }``):

  layers.losses     AM-Softmax and the local-structure losses (Center, Push, GlobPush)
  layers.loss_math  their forward values and gradients as plain numpy functions
  layers.config     typed layer configs parsed from ``param_str`` JSON
  layers.data       the Market-1501 data layer and the hard-sample-mining feedback layer
  layers.mining     hard-sample mining (numpy), used by the data layer
  layers.augment    the progressively harder augmentation, used by the data layer
  layers.dropout    dropout that switches itself off late in training

The numpy modules import without Caffe; the layer classes exist only when ``caffe`` imports.
"""
