"""A reset in the middle of flashing: the device still runs its previous model."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.errors import BridgeError
from hil_tests.support import reference_outputs


class _Stop(Exception):
    pass


def _check_runs(device, payload, seed: int = 0) -> None:
    info = device.info()
    assert info.active is not None and info.active.sha256 == payload.sha256
    rng = np.random.default_rng(seed)
    inputs = rng.integers(-128, 128, info.input_bytes, dtype=np.int8).tobytes()
    assert device.invoke(inputs).outputs == reference_outputs(payload, inputs)


def test_reset_command_mid_flash_keeps_the_previous_model(target, payloads):
    previous, new = payloads("kws"), payloads("ic")

    def stop_halfway(done: int, total: int) -> None:
        if done > total // 2:
            raise _Stop()

    with target.connect() as device:
        device.flash(previous)
        with pytest.raises(_Stop):
            device.flash(new, progress=stop_halfway)
        assert device.info().transfer_xfer != 0  # the device holds half a transfer
        device.reset()
        info = device.info()
        assert info.transfer_xfer == 0
        _check_runs(device, previous)
        # And flashing works again afterwards, from the start.
        result = device.flash(new)
        assert not result.already_active
        _check_runs(device, new, 1)


def test_power_loss_mid_flash_keeps_the_previous_model(target, payloads):
    """The simulator is killed (SIGKILL) mid-transfer and started again on the same slots."""
    if not target.simulated:
        pytest.skip("needs the simulator: it pulls the plug on the device")
    previous, new = payloads("ad"), payloads("kws")
    killed = []

    def pull_the_plug(done: int, total: int) -> None:
        if done > total * 0.4 and not killed:
            killed.append(done)
            target.sim.kill()

    with target.connect() as device:
        device.flash(previous)
        with pytest.raises(BridgeError) as failure:
            device.flash(new, force=True, progress=pull_the_plug)
    assert killed, "the transfer ended before the plug was pulled"
    assert "\n" not in str(failure.value)
    target.restart_sim()
    with target.connect() as device:
        _check_runs(device, previous)
