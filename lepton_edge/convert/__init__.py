"""Host-side conversion: load a model, prune, quantize, fit it to a device profile, package an artifact.

Host only: these modules import TensorFlow (lazily). The pipeline is :mod:`lepton_edge.convert.pipeline`, its
inputs are in :mod:`~lepton_edge.convert.options` and its outcome in :mod:`~lepton_edge.convert.result`;
each other module does one step.
"""
