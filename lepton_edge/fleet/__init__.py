"""The fleet side: artifact and state store, OTA controller, HTTP API, deploy, live view (the device
simulator and the private broker are tools: :mod:`lepton_edge.tools`).

Host code (it may run anywhere Python runs, but never on the device's critical path).
"""
