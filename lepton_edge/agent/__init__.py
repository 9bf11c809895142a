"""The on-device agent: A/B model store, runtimes with a fixed arena, local inference API.

Device-side code: it never imports TensorFlow, Keras or matplotlib (``tests/test_agent_boundary.py``
proves it on a running agent). Modules, one job each:

* ``config``: the ``AGENT.toml`` file;
* ``store``: two slots, the active pointer, install/activate/confirm/rollback, resumable downloads;
* ``policy``: what the store accepts (versions, runtime, flash and RAM);
* ``health``: the check a new model passes before it is confirmed;
* ``served``: the model being served and its runner;
* ``codec``: JSON and raw-bytes bodies of ``/v1/infer``;
* ``api``: the HTTP/1.1 server of the local API; ``metrics``: Prometheus and latency percentiles;
* ``bare``: a manifest for a bare ``.tflite``;
* ``daemon``: the :class:`~lepton_edge.agent.daemon.Agent` tying them together;
* ``mqtt_link``: the MQTT side (retained status, telemetry, OTA) over one connection, when ``[mqtt]`` is set;
* ``ota``: over-the-air updates: verify the job, fetch blocks into the store (resumable), activate;
* ``telemetry``: the periodic telemetry sample;
* ``telemetry_buffer``: boot id, seqs, and resending until the controller acknowledges (the simulator's too).
"""
