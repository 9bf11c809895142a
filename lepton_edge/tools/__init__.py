"""The tools people run beside the kit, not parts of it: nothing on the device or in the controller imports them.

* :mod:`~lepton_edge.tools.devsim`: the fleet simulator, many devices speaking the real MQTT protocol
  (``python -m lepton_edge.tools.devsim``);
* :mod:`~lepton_edge.tools.mosquitto`: a private Mosquitto broker on a free port, with its own
  certificates, for the demo, the tests and the benches;
* :mod:`~lepton_edge.tools.samples`: the project's own small Keras models (imports TensorFlow);
* :mod:`~lepton_edge.tools.plan_plot`: the arena plan as a picture (``lepton-edge plan --png``; imports
  matplotlib).

Host side (docs/DESIGN.md, "Boundaries"): the tools may import anything the host has; device-side code
(``tflite/``, ``plan/``, ``runtime/``, ``agent/``, ``gateway/``, ``mqtt/``, ``firmware_bridge/``) never
imports them.
"""
