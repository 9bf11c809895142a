"""The fleet side: artifact and state store, OTA controller, HTTP API, live view, device simulator.

Host code (it may run anywhere Python runs, but never on the device's critical path).
"""
