"""The serial gateway: a microcontroller on a serial line as a member of the fleet (``lepton-edge gateway``)."""
