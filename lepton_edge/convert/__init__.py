"""Host-side conversion: load a model, prune, quantize, fit it to a device profile, package an artifact.

Host only: these modules import TensorFlow (lazily). The pipeline is :mod:`lepton_edge.convert.pipeline`;
each other module does one step.
"""
