"""A model whose arena does not fit the RAM the device reports is refused before any byte is sent."""

from __future__ import annotations

import re


def test_model_too_big_is_refused_before_sending(target, tmp_path):
    from hil_tests.models import wide_add_model

    with target.connect() as device:
        ram = device.hello.arena_ram_bytes
        before = device.stats()
        xfer_before = device.info().transfer_xfer
    model = tmp_path / "too_big.tflite"
    model.write_bytes(wide_add_model(ram // 4 + 1024))  # x and y, float32: about twice the RAM

    proc = target.cli("flash", str(model))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "does not fit" in lines[0] and "nothing was sent" in lines[0]
    numbers = [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?= B)", lines[0])]
    assert ram in numbers and max(numbers) > ram, lines[0]

    with target.connect() as device:
        after = device.stats()
        assert after.model_bytes_received == before.model_bytes_received or after.uptime_ms < before.uptime_ms
        assert device.info().transfer_xfer == xfer_before
