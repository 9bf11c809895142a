"""A device's last progress that never reaches the controller (its subscription refused for a moment, as a NATS
node does while JetStream elects leaders; CI lost a deployment so) must not leave the job unfinished for ever:
the controller sends the job again and the device says its last word again, without downloading anything twice.

Real Mosquitto loses the messages: its ACL is checked on delivery, and SIGHUP reloads it."""

from __future__ import annotations

import signal
import time

from fleet_helpers import make_artifact, wait_for
from lepton_edge.fleet.controller import Controller, ControllerOptions
from lepton_edge.mqtt import SessionOptions, parse_broker_url
from lepton_edge.tools.devsim import SimDevice, SimOptions
from mosquitto import Broker

USERS = {"controller": "ctl-secret", "dev-a": "a-secret"}
DEVICE = "pattern readwrite lepton/v1/default/%u/#\n"
CAN_READ_PROGRESS = DEVICE + "user controller\ntopic readwrite lepton/v1/#\n"
CANNOT_READ_PROGRESS = CAN_READ_PROGRESS + "topic deny lepton/v1/default/+/ota/progress\n"
FAST = SessionOptions(min_backoff_s=0.1, max_backoff_s=1.0)
RESEND_S = 1.0


def set_acl(broker: Broker, acl: str) -> None:
    (broker.dir / "acl").write_text(acl)
    broker.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)  # Mosquitto reloads the file between two passes of its loop


def test_a_job_whose_last_progress_was_lost_is_sent_again_and_ends(tmp_path):
    with Broker(tmp_path, users=USERS, acl=CAN_READ_PROGRESS) as broker:
        controller = Controller(parse_broker_url(broker.url("controller", USERS["controller"])), tmp_path / "store",
                                options=ControllerOptions(housekeeping_s=0.1, job_resend_s=RESEND_S))
        dev = SimDevice("dev-a", parse_broker_url(broker.url("dev-a", USERS["dev-a"])),
                        SimOptions(session=FAST, window=1, block_delay_s=0.05))
        controller.start()
        try:
            assert controller.wait_connected(5), controller.mqtt.last_error
            dev.start()
            wait_for(lambda: controller.is_online("dev-a"), 10, "dev-a never online")
            art = make_artifact(tmp_path / "v2", version=2, size=120_000, seed=2)
            art_id = controller.upload_artifact((art / "manifest.json").read_bytes(), None,
                                                (art / "model.tflite").read_bytes())["artifact"]
            dep = controller.create_deployment(art_id, ["dev-a"], block_size=8192)["deployment"]

            def controller_state() -> str:
                (row,) = controller.deployment(dep)["devices"]
                return row["state"]
            wait_for(lambda: controller_state() == "downloading", 10, controller_state)
            set_acl(broker, CANNOT_READ_PROGRESS)
            p = dev.wait_state({"healthy", "failed"}, 20)
            assert p is not None and p.state == "healthy", dev.progress_log
            time.sleep(RESEND_S * 3)  # the job is sent again meanwhile; the answer is lost all the same
            assert controller_state() == "downloading"  # what the controller heard last: the rest was lost
            assert not controller.deployment(dep)["done"]
            blocks = dev.ota_blocks
            assert blocks == -(-120_000 // 8192)  # every block once
            set_acl(broker, CAN_READ_PROGRESS)
            wait_for(lambda: controller.deployment(dep)["done"], RESEND_S * 5, lambda: controller.deployment(dep))
            assert controller_state() == "healthy"
            assert dev.model.version == 2 and dev.ota_blocks == blocks  # its last word again, no second download
        finally:
            dev.stop()
            controller.stop()
