"""Build and run the reference firmware (``firmware_bridge/firmware/``) from Python.

- :mod:`.boards`: the boards the firmware has ports for, and which profile each plays.
- :mod:`.build`: ``build(board)`` runs the firmware's Makefile in a content-keyed cache;
  ``cached_build(board)`` only looks.
- :mod:`.launch`: ``start_board(fw, state)`` boots a build (QEMU or the host executable) on a
  pseudo-terminal; ``run_probe(fw, model)`` measures a model's arena on the target.
"""
